"""ViSpec (vision-aware speculative decoding) for vLLM.

The package is loaded by vLLM through the ``vllm.general_plugins`` entry point
(:func:`vllm_vispec.plugin.register`); importing it alone has no side effects.
"""

__version__ = "0.1.0"
