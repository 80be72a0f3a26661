"""The CUDA code path inside vLLM on CPU: with ``VLLM_VISPEC_KERNELS=triton`` the draft's
image compression and compressed-layout attention, its tree levels' attention and the
target's tree verification run as the Triton kernels (in Triton's interpreter) inside the
engine, and the output is still the target's and the draft still ViSpec's.

Everything runs in one subprocess pytest with the setting on, so no interpreted kernel ever
reaches this process: the test below marked ``inside`` (greedy equality on the tiny
Qwen2.5-VL, and LLaVA with VISPEC_FULL_MATRIX=1: text-only, one- and two-image prompts
batched with chains of 3, then a two-image prompt alone with trees) and one existing case
of test_draft_fidelity.py (tokens and logits of every draft step against the reference
draft). The subprocess's plugin
(kernel_launch_report.py) records each test's kernel launches; the outer test requires every
case to pass and every kernel to have run in it. The kernels' shape checks raise under the
setting instead of falling back, so a pass means the kernels computed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from matrix import rows

from vllm_vispec.kernel_dispatch import KERNELS_ENV

ROOT = Path(__file__).resolve().parents[2]
IN_SUBPROCESS = os.environ.get(KERNELS_ENV) == "triton"
inside = pytest.mark.skipif(
    not IN_SUBPROCESS,
    reason=f"runs in test_kernels_run_inside_vllm's subprocess ({KERNELS_ENV}=triton)")

# The interpreter is slow: short generations (a prefix of the 40-token baselines).
BATCH_TOKENS = 8
ALONE_TOKENS = 6
# Trees for a request alone, chains of num_speculative_tokens for the batch.
TREE = {"depth": 2, "top_k": 4, "total_tokens": 11, "chain_above_batch": 1,
        "off_above_batch": 64}
FIDELITY_CASE = ("tests/e2e/test_draft_fidelity.py::"
                 "test_draft_tokens_and_logits_match_the_reference[qwen2_5_vl-whole-prefill]")
# Qwen2.5-VL runs every kernel with M-RoPE positions and pictures of two sizes; LLaVA
# runs the same kernels again (about a minute in the interpreter).
KINDS = rows(["qwen2_5_vl"], ["llava"])
DRAFT_KERNELS = ("image_compression", "compressed_attention")
TREE_KERNELS = ("tree_attention.draft", "tree_attention.target")


def _greedy(llm, convs: dict, max_tokens: int) -> dict[str, list[int]]:
    from vllm import SamplingParams
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.chat(list(convs.values()), params, use_tqdm=False)
    return {name: list(o.outputs[0].token_ids) for name, o in zip(convs, outs)}


@inside
@pytest.mark.parametrize("kind", KINDS)
def test_interpreted_kernels_match_no_speculation(kind, baseline):
    import triton
    from prompts import conversations
    from triton.runtime.jit import JITFunction
    from vllm_runs import offline_llm, spec_counters, vispec_config

    from vllm_vispec.kernels import compressed_attention

    expected = baseline(kind)
    convs = conversations()
    with offline_llm(kind, vispec_config(kind, 3, tree=TREE)) as llm:
        batched = _greedy(llm, convs, BATCH_TOKENS)
        alone = _greedy(llm, {"two_images": convs["two_images"]}, ALONE_TOKENS)
        drafter = llm.llm_engine.model_executor.driver_worker.worker.model_runner.drafter
        modes = dict(drafter.mode_counts)
        counters = spec_counters(llm)
    for name in convs:
        assert batched[name] == expected[name][0][:BATCH_TOKENS], f"{name} (batched) differs"
    assert alone["two_images"] == expected["two_images"][0][:ALONE_TOKENS], "alone differs"
    assert modes["chain"] > 0 and modes["tree"] > 0, modes
    assert 0 < counters["num_accepted_tokens"] < counters["num_draft_tokens"], counters
    # The interpreter stayed with our private kernel copy: nothing process-wide changed.
    assert "TRITON_INTERPRET" not in os.environ and not triton.knobs.runtime.interpret
    assert type(compressed_attention._compressed_attention_kernel) is JITFunction


def test_kernels_run_inside_vllm(tmp_path):
    if IN_SUBPROCESS:
        pytest.skip("this is the subprocess")
    report, junit = tmp_path / "launches.json", tmp_path / "junit.xml"
    this = Path(__file__).relative_to(ROOT)
    own_cases = [f"{this}::test_interpreted_kernels_match_no_speculation[{kind}]"
                 for kind in KINDS]
    env = {**os.environ, KERNELS_ENV: "triton", "VISPEC_LAUNCH_REPORT": str(report),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)
    env.pop("VISPEC_KERNEL_TESTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "kernel_launch_report",
           "-p", "no:cacheprovider", f"--junitxml={junit}", *own_cases, FIDELITY_CASE]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, (f"interpreter-path cases failed ({done.returncode}):\n"
                                  f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}")

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    expected = {"tests": len(own_cases) + 1, "failures": 0, "errors": 0, "skipped": 0}
    assert counts == expected, counts

    launches = json.loads(report.read_text())
    for case in own_cases:
        missing = [k for k in DRAFT_KERNELS + TREE_KERNELS if not launches[case].get(k)]
        assert not missing, f"{case}: no {missing} launches ({launches[case]})"
    missing = [k for k in DRAFT_KERNELS if not launches[FIDELITY_CASE].get(k)]
    assert not missing, f"draft fidelity: no {missing} launches ({launches[FIDELITY_CASE]})"
    print(json.dumps(launches, indent=1))
