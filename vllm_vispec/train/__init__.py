"""ViSpec draft training: data the target generates, the two-stage recipe, export.

``vispec-train --help`` (or ``python -m vllm_vispec.train --help``) explains the commands.
"""
