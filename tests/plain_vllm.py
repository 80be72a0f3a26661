"""vLLM without speculation and without any plugin: the baseline of the equality tests.

The test process has vllm-vispec loaded (vLLM loads general plugins once per process), so a
run without speculation there is vLLM plus our patches. The baseline must be vLLM alone: it
runs in a subprocess started with ``VLLM_PLUGINS=""``. vLLM 0.32 reads that variable as
``os.environ["VLLM_PLUGINS"].split(",")``, so ``""`` is the allow-list ``[""]``, which names
no entry point, and ``load_plugins_by_group`` loads none (only an unset variable loads all).
The subprocess checks this itself, in its own process and in every worker, before it hands
back any output: no ``vllm_vispec`` module imported, no patch marker on any patch target,
no draft architecture in vLLM's model registry, no general plugin allowed.

Runs are cached per request (target, engine arguments, prompts, sampling) for the session.

Run as a script it is the subprocess: ``python plain_vllm.py REQUEST.json RESULT.json``;
it imports nothing of this project.
"""

from __future__ import annotations

import json
import os
import sys

GENERAL_PLUGINS = "vllm.general_plugins"


# ---- the subprocess: plain vLLM only ---------------------------------------------------

def plugin_state(checks: dict) -> dict:
    """What of vllm-vispec this process has: modules, patched vLLM targets, registry."""
    import importlib
    from importlib.metadata import entry_points

    import vllm.plugins
    from vllm import ModelRegistry

    patched = []
    for target in checks["patch_targets"]:
        module_name, qualname = target.split(":")
        try:
            owner = importlib.import_module(module_name)
        except ImportError:  # a backend whose package is missing here: nothing to patch
            continue
        for part in qualname.split("."):
            owner = getattr(owner, part)
        func = getattr(owner, "__func__", owner)
        if hasattr(func, checks["marker"]):
            patched.append(target)
    return {
        "pid": os.getpid(),
        "VLLM_PLUGINS": os.environ.get("VLLM_PLUGINS"),
        "installed_general_plugins": sorted(e.name for e in entry_points(group=GENERAL_PLUGINS)),
        # Loading the group again under this process's allow-list imports what it allows.
        "allowed_general_plugins": sorted(vllm.plugins.load_plugins_by_group(GENERAL_PLUGINS)),
        "plugins_loaded": vllm.plugins.plugins_loaded,
        "vispec_modules": sorted(m for m in sys.modules if m.split(".")[0] == "vllm_vispec"),
        "patched_targets": patched,
        "draft_registered": checks["draft_architecture"] in ModelRegistry.get_supported_archs(),
    }


def worker_plugin_state(_worker, checks: dict) -> dict:
    return plugin_state(checks)


def plugin_free_problems(state: dict) -> list[str]:
    """Why ``state`` is not plain vLLM (empty when it is)."""
    problems = []
    if state["VLLM_PLUGINS"] != "":
        problems.append(f"VLLM_PLUGINS is {state['VLLM_PLUGINS']!r}, not ''")
    if not state["plugins_loaded"]:
        problems.append("vLLM never ran its plugin loading, so the check proves nothing")
    for key in ("allowed_general_plugins", "vispec_modules", "patched_targets"):
        if state[key]:
            problems.append(f"{key}: {state[key]}")
    if state["draft_registered"]:
        problems.append("the vispec draft architecture is registered with vLLM")
    return problems


def run_plain(request: dict) -> dict:
    from heap import freeze_heap  # this script's folder is on its path; imports no vLLM
    from vllm import LLM, SamplingParams

    freeze_heap()  # faster engine builds; computes nothing differently
    llm = LLM(**request["engine"])
    outputs = []
    for batch in request["batches"]:
        sampling = batch["sampling"]
        params = ([SamplingParams(**p) for p in sampling] if isinstance(sampling, list)
                  else SamplingParams(**sampling))
        outs = llm.chat(batch["conversations"], params, use_tqdm=False)
        outputs.append([[list(o.outputs[0].token_ids), o.outputs[0].text] for o in outs])
    # Checked after the runs: imports and patches never go away, so nothing slipped in.
    states = [plugin_state(request["checks"]),
              *llm.collective_rpc(worker_plugin_state, args=(request["checks"],))]
    for state in states:
        problems = plugin_free_problems(state)
        assert not problems, f"the baseline is not plain vLLM (pid {state['pid']}): {problems}"
    return {"outputs": outputs, "plugin_states": states}


# ---- the test process ------------------------------------------------------------------

_RUNS: dict[str, dict] = {}


def plain_run(kind: str, batches: list[tuple[list, dict | list[dict]]],
              env: dict[str, str] | None = None, **engine) -> dict:
    """Runs ``batches`` (conversations, sampling-parameter kwargs: one dict for all or one
    per conversation), one ``llm.chat`` each in order, in one engine of plain vLLM built
    with the tests' LLM arguments (``engine`` overrides them).

    Returns ``{"outputs": [[[token_ids, text], ...] per batch], "plugin_states": [...]}``
    (the plugin check of the subprocess and of each worker)."""
    from vllm_runs import engine_args

    request = {"engine": engine_args(kind, None, **engine),
               "batches": [{"conversations": convs, "sampling": sampling}
                           for convs, sampling in batches],
               "env": env or {},
               "checks": plain_vllm_checks()}
    key = json.dumps(request, sort_keys=True)
    if key not in _RUNS:
        _RUNS[key] = _run_in_subprocess(request)
    return _RUNS[key]


def plain_greedy(kind: str, convs: dict[str, list[dict]], **engine
                 ) -> dict[str, tuple[list[int], str]]:
    """Greedy (token ids, text) per conversation name, all sent as one batch, as
    vllm_runs.greedy_chat gives for a run with speculation."""
    from vllm_runs import GREEDY

    (outs,) = plain_run(kind, [(list(convs.values()), GREEDY)], **engine)["outputs"]
    return {name: (ids, text) for name, (ids, text) in zip(convs, outs)}


def plain_vllm_checks() -> dict:
    """What the subprocess looks for, taken from the plugin here so the lists stay true."""
    from vllm_vispec.model.hf_config import DRAFT_ARCHITECTURE
    from vllm_vispec.patches import PATCHES
    from vllm_vispec.patches.registry import MARKER

    return {"patch_targets": sorted({p.target for p in PATCHES}), "marker": MARKER,
            "draft_architecture": DRAFT_ARCHITECTURE}


def _run_in_subprocess(request: dict) -> dict:
    import subprocess
    import tempfile
    from pathlib import Path

    from vllm_vispec.serve_process import NO_PLUGINS_ENV

    env = {**os.environ, **request["env"], **NO_PLUGINS_ENV,
           # The engine core in the subprocess itself: its plugin check covers it.
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("TRITON_INTERPRET", None)
    with tempfile.TemporaryDirectory(prefix="plain-vllm-") as tmp:
        request_path, result_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request_path.write_text(json.dumps(request))
        done = subprocess.run([sys.executable, __file__, str(request_path), str(result_path)],
                              env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"plain vLLM run failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
        return json.loads(result_path.read_text())


if __name__ == "__main__":
    _request_path, _result_path = sys.argv[1:]
    with open(_request_path) as f:
        _result = run_plain(json.load(f))
    with open(_result_path, "w") as f:
        json.dump(_result, f)
