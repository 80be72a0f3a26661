"""Patch: vLLM's runner builds a VispecProposer where it builds an EagleProposer for a
vispec draft."""

from __future__ import annotations

from .engine_scope import uses_vispec_draft
from .registry import Patch


def _make_wrapper(original):
    def __new__(cls, *args, **kwargs):
        from vllm.v1.spec_decode.eagle import EagleProposer
        vllm_config = args[0] if args else kwargs.get("vllm_config")
        if cls is EagleProposer and uses_vispec_draft(vllm_config):
            from ..proposer import VispecProposer
            cls = VispecProposer
        # Python then runs the chosen class's __init__ (a VispecProposer is an
        # EagleProposer, so every isinstance check in the runner still holds).
        if original is object.__new__:
            return original(cls)
        return original(cls, *args, **kwargs)
    return staticmethod(__new__)


PATCH = Patch(
    name="vispec_proposer",
    target="vllm.v1.spec_decode.eagle:EagleProposer.__new__",
    what="Makes EagleProposer(...) return a VispecProposer when the draft is a ViSpec "
         "draft; other EAGLE drafts are untouched.",
    why="The classic runner hard-codes EagleProposer for EAGLE methods and has no hook for "
        "a proposer class; ViSpec needs per-request image state and its own attention "
        "metadata around vLLM's EAGLE drafting loop.",
    remove_when="vLLM lets a plugin provide the proposer for a speculative method.",
    make_wrapper=_make_wrapper,
    upstream="vllm-project/vllm#36219 (RFC: one proposer interface, which would let a "
             "plugin provide one)",
)
