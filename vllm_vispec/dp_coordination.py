"""The draft under data parallelism: no batch coordination with the other DP ranks.

With ``data_parallel_size > 1`` (vLLM runs DP ranks in lock step only for MoE targets)
vLLM's proposer agrees each draft pass's batch with the other ranks through an
all-reduce (``coordinate_batch_across_dp``): in vLLM's ``propose`` once for the first
pass and once more from two draft tokens on, in ``dummy_run`` (an idle rank) once, or
twice from two tokens on (and not at all after a step that drafted nothing, as its passes
follow the last step's K); ``set_forward_context`` adds one for each pass of a MoE target
that comes without the agreed sizes, as a tree's growth passes do. An all-reduce returns
only when every rank has made it, so ranks whose steps draft in different ways (a tree:
one vLLM pass, then its own passes; a chain; nothing; an idle rank) would wait for each
other for ever.

The vispec draft needs nothing from that agreement: it is dense (no expert layers read
the DP token counts) and runs without CUDA graphs (``initialize_cudagraph_keys``), so
each rank keeps its own batch size whatever the others say. Its passes therefore run
under vLLM's ``skip_dp_coordination``: no rank makes a draft all-reduce, the same number
(zero) on every rank whatever its step drafts, and a draft step waits neither for the
other ranks nor for the device (vLLM reads each all-reduce's result on the host: with
NCCL, a wait for the device).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

from vllm.v1.worker.dp_utils import skip_dp_coordination


def without_dp_coordination(method):
    """Runs a proposer method without DP batch coordination when the engine runs more
    than one DP rank (with one there is none to skip: nothing changes)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        data_parallel = self.vllm_config.parallel_config.data_parallel_size > 1
        with skip_dp_coordination() if data_parallel else nullcontext():
            return method(self, *args, **kwargs)
    return run
