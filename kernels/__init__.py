"""Triton kernels of vllm-vispec, each with its PyTorch reference.

Installed as ``vllm_vispec.kernels``. Free of vLLM imports so its tests and benchmarks run
on a machine with only torch and Triton. On CPU, Triton runs only in its interpreter
(``TRITON_INTERPRET=1``, set before importing these modules).
"""
