"""The self-check's subprocesses: one per engine, and the kernels in Triton's interpreter.

Environments: a baseline engine gets ``VLLM_PLUGINS=""`` (vLLM 0.32 splits the variable on
commas and loads only the plugins it names, so an empty value loads none, while unset
loads all); a vispec engine gets the plugin (added to ``VLLM_PLUGINS`` when the user's
value leaves it out). ``TRITON_INTERPRET`` reaches the kernel subprocess only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..serve_process import NO_PLUGINS_ENV

PLUGIN_NAME = "vispec"  # our entry point in vllm.general_plugins


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # never into a vLLM process
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def engine_env(with_plugin: bool) -> dict[str, str]:
    env = base_env()
    if not with_plugin:
        env.update(NO_PLUGINS_ENV)
    elif "VLLM_PLUGINS" in env:
        names = [n for n in env["VLLM_PLUGINS"].split(",") if n]
        if PLUGIN_NAME not in names:
            env["VLLM_PLUGINS"] = ",".join(names + [PLUGIN_NAME])
    return env


def interpreter_env() -> dict[str, str]:
    return {**base_env(), "TRITON_INTERPRET": "1"}


@dataclass
class ProcessRun:
    ok: bool
    seconds: float
    log: Path
    result: Any = None  # the JSON the process wrote
    error: str = ""  # one line, for the table
    details: dict[str, Any] = field(default_factory=dict)


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_module(module: str, args: list[str], env: dict[str, str], log: Path, out: Path,
               timeout: float) -> ProcessRun:
    """``python -m module *args``, output to ``log``; its result is the JSON in ``out``."""
    started = time.monotonic()
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log_file,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
            proc.wait()
            code = None
    seconds = time.monotonic() - started
    result = None
    if out.is_file():
        try:
            result = json.loads(out.read_text())
        except json.JSONDecodeError:
            result = None
    if code is None:
        error = f"timed out after {timeout:.0f} s"
    elif isinstance(result, dict) and result.get("error"):
        error = result["error"]
    elif code != 0 or result is None:
        error = f"exited with code {code} without a result"
    else:
        error = ""
    run = ProcessRun(ok=not error, seconds=seconds, log=log, result=result, error=error)
    if error:
        run.details["log_tail"] = log_tail(log)
    return run


def run_engine(job: dict[str, Any], work_dir: Path, timeout: float) -> ProcessRun:
    name = f"{job['kind']}-{job['mode']}"
    job_file, out = work_dir / f"{name}.job.json", work_dir / f"{name}.result.json"
    job_file.write_text(json.dumps(job))
    out.unlink(missing_ok=True)
    return run_module("vllm_vispec.selfcheck.engine_run", [str(job_file), str(out)],
                      engine_env(job["mode"] != "none"), work_dir / f"{name}.log", out,
                      timeout)


def run_interpreted_kernels(work_dir: Path, timeout: float, fault: bool) -> ProcessRun:
    out = work_dir / "kernels.result.json"
    out.unlink(missing_ok=True)
    return run_module("vllm_vispec.selfcheck.kernel_checks",
                      ["--out", str(out)] + (["--fault"] if fault else []),
                      interpreter_env(), work_dir / "kernels.log", out, timeout)
