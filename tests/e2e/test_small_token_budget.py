"""A token budget smaller than two pictures: vispec finishes, with the text of plain vLLM.

With ``max_num_batched_tokens`` below two pictures' tokens, vLLM's encoder cache holds less
than two pictures. Under the EAGLE look-ahead of vLLM 0.32 a prompt whose second picture
follows its first one token later (LLaVA's ``<image>\\n``) was then scheduled no tokens for
ever, and the engine never finished (patches/encoder_budget.py). The engines run one after
another in a subprocess (vLLM imported once) that is watched: a case that does not finish
within a timeout is a hang, fails its test and ends the subprocess, instead of hanging.

The tiny LLaVA's pictures are 16 image tokens: budgets 12 (below one picture), 16 and 24
(above one, below two), chains and trees, all prompts in one batch: text-only, one
picture, two pictures apart, and two pictures back to back. Greedy text must equal vLLM
without speculation and without any plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENGINE_TIMEOUT_S = 300  # a case takes 5-15 s on 2 cores (the first also imports vLLM)
MAX_TOKENS = 24
TREE = {"depth": 2, "top_k": 4, "total_tokens": 11, "chain_above_batch": 64,
        "off_above_batch": 64}
CASES = [("chain", 12), ("chain", 16), ("chain", 24), ("tree", 12), ("tree", 24)]


def batch() -> dict[str, list[dict]]:
    from prompts import conversations, text

    from vllm_vispec.tiny.images import image_part, shapes_image
    convs = conversations()
    pair = [image_part(shapes_image(11)), image_part(shapes_image(12, (64, 80)))]
    convs["two_images_back_to_back"] = [{"role": "user", "content": [
        *pair, text("What changed?")]}]
    convs["two_images_at_the_end"] = [{"role": "user", "content": [
        text("Look at these:"), *reversed(pair)]}]
    return convs


def greedy():
    return dict(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def picture_tokens() -> int:
    from vllm_vispec.tiny import tiny_target
    return json.loads((tiny_target("llava") / "config.json").read_text())["image_seq_length"]


@pytest.fixture(scope="module")
def expected():
    from plain_vllm import plain_run
    convs = batch()
    (outs,) = plain_run("llava", [(list(convs.values()), greedy())])["outputs"]
    return {name: ids for name, (ids, _text) in zip(convs, outs)}


def case_name(shape: str, budget: int) -> str:
    return f"{shape}-{budget}"


@pytest.fixture(scope="module")
def engine_runs() -> dict:
    """Every case's engine result by case name (see run_cases)."""
    from vllm_runs import vispec_config
    requests = [{"case": case_name(shape, budget),
                 "speculative_config": vispec_config(
                     "llava", 3, **({"tree": TREE} if shape == "tree" else {})),
                 "max_num_batched_tokens": budget, "conversations": batch(),
                 "sampling": greedy()} for shape, budget in CASES]
    return run_cases(requests)


@pytest.mark.parametrize("shape,budget", CASES)
def test_small_budget_finishes_with_plain_text(shape, budget, expected, engine_runs):
    case = case_name(shape, budget)
    if case not in engine_runs["results"]:
        if engine_runs["hung"] == case:
            pytest.fail(f"the engine did not finish in {ENGINE_TIMEOUT_S} s (hang):\n"
                        f"{engine_runs['log']}")
        if engine_runs["hung"]:
            pytest.fail(f"not run: {engine_runs['hung']} hung before it, in the same "
                        "subprocess")
        pytest.fail(f"the engine run ended ({engine_runs['returncode']}) before this case "
                    f"finished:\n{engine_runs['log']}")
    got = engine_runs["results"][case]
    # The configuration is the one that hung: the encoder cache holds fewer than two
    # pictures, and the batch has a prompt whose pictures are one token apart.
    assert got["encoder_cache_size"] < 2 * picture_tokens()
    assert 1 in got["picture_gaps"]
    for name, ids in expected.items():
        assert got["outputs"][name] == ids, f"{name} differs from plain vLLM"
    assert got["num_draft_tokens"] > 0
    if shape == "tree":
        assert got["modes"]["tree"] > 0


def run_cases(requests: list[dict]) -> dict:
    """Runs each request's engine in turn in one subprocess, which writes a line per
    finished case. A case still running after ENGINE_TIMEOUT_S is a hang: the subprocess
    is killed and the case named. Returns the results by case, the hung case (or None),
    the exit status and the tail of the subprocess's output."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("TRITON_INTERPRET", None)
    with tempfile.TemporaryDirectory(prefix="small-budget-") as tmp:
        request_path, result_path = Path(tmp) / "requests.json", Path(tmp) / "results.jsonl"
        log_path = Path(tmp) / "log.txt"
        request_path.write_text(json.dumps(requests))
        result_path.touch()
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, __file__, str(request_path),
                                     str(result_path)], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            done, hung, last_progress = 0, None, time.monotonic()
            while proc.poll() is None:
                time.sleep(0.5)
                finished = len(_read_results(result_path))
                if finished > done:
                    done, last_progress = finished, time.monotonic()
                elif time.monotonic() - last_progress > ENGINE_TIMEOUT_S:
                    hung = requests[done]["case"]
                    proc.kill()
                    proc.wait()
        return {"results": _read_results(result_path), "hung": hung,
                "returncode": proc.returncode, "log": log_path.read_text()[-4000:]}


def _read_results(path: Path) -> dict[str, dict]:
    """The finished cases: the lines ended so far (one may be half written)."""
    results = {}
    for line in path.read_text().split("\n")[:-1]:
        result = json.loads(line)
        results[result["case"]] = result
    return results


def picture_gaps(prompt: list[int], image_token: int) -> list[int]:
    """Text tokens between consecutive pictures (runs of the image token) of a prompt."""
    runs, start = [], None
    for i, token in enumerate([*prompt, None]):
        if token == image_token and start is None:
            start = i
        elif token != image_token and start is not None:
            runs.append((start, i))
            start = None
    return [b[0] - a[1] for a, b in zip(runs, runs[1:])]


def _engine_main(request: dict) -> dict:
    """The subprocess: one vispec engine, every conversation in one batch."""
    from vllm import SamplingParams
    from vllm_runs import offline_llm, spec_counters

    convs = request["conversations"]
    with offline_llm("llava", request["speculative_config"],
                     max_num_batched_tokens=request["max_num_batched_tokens"]) as llm:
        outs = llm.chat(list(convs.values()), SamplingParams(**request["sampling"]),
                        use_tqdm=False)
        core = llm.llm_engine.engine_core.engine_core
        drafter = core.model_executor.driver_worker.worker.model_runner.drafter
        counters = spec_counters(llm)
        image_token = llm.llm_engine.model_config.hf_config.image_token_index
        gaps = [gap for out in outs for gap in picture_gaps(out.prompt_token_ids, image_token)]
        return {"outputs": {name: list(o.outputs[0].token_ids) for name, o in zip(convs, outs)},
                "encoder_cache_size": core.scheduler.encoder_cache_manager.cache_size,
                "picture_gaps": gaps,
                "num_draft_tokens": counters["num_draft_tokens"],
                "modes": dict(drafter.mode_counts)}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    _request_path, _result_path = sys.argv[1:]
    for _request in json.loads(Path(_request_path).read_text()):
        _line = json.dumps({"case": _request["case"], **_engine_main(_request)}) + "\n"
        with open(_result_path, "a") as _out:
            _out.write(_line)
