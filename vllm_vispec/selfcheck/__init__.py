"""``vispec-selfcheck``: does vllm-vispec work on this machine? Run it first on a new GPU.

Builds the tiny local targets and drafts, checks greedy equality of vispec against vLLM
without speculation (no plugin loaded), checks the Triton kernels against their PyTorch
references on this device, and prints one table (see :mod:`.cli`). Importing this package
imports neither vLLM nor Triton.
"""
