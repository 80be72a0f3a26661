"""Start and stop a local ``vllm serve`` process, for the demo, tests and benchmarks.

Only loopback addresses are used. The server is stopped with SIGTERM (then SIGKILL) on
the whole process group, so no engine or worker process outlives it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SPEC_COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")
# The environment of a server that must be vLLM alone (a baseline): vLLM 0.32 splits
# VLLM_PLUGINS on commas, so "" is an allow-list naming no plugin; unset loads them all.
NO_PLUGINS_ENV = {"VLLM_PLUGINS": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_cli() -> list[str]:
    exe = Path(sys.executable).with_name("vllm")
    return [str(exe)] if exe.exists() else [shutil.which("vllm") or "vllm"]


class VllmServer:
    """``with VllmServer(model, args) as server: server.url ...``"""

    def __init__(self, model: str, args: list[str], log_path: Path,
                 startup_timeout: float = 600.0, env: dict[str, str] | None = None):
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [*vllm_cli(), "serve", model, "--host", "127.0.0.1",
                    "--port", str(self.port), *args]
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode} during "
                                   f"start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2):
                    return self
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vllm serve not ready after {self.startup_timeout}s:\n"
                           f"{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def post(self, path: str, body: dict, timeout: float = 300.0) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def spec_decode_counters(self) -> dict[str, float]:
        """vLLM's spec-decode counters from /metrics (summed over label sets)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return parse_spec_counters(text)


def parse_spec_counters(metrics_text: str) -> dict[str, float]:
    out = {name: 0.0 for name in SPEC_COUNTERS}
    per_pos: dict[int, float] = {}
    for line in metrics_text.splitlines():
        m = re.match(r"vllm:spec_decode_(\w+?)_total(\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name in out:
            out[name] += value
        elif name == "num_accepted_tokens_per_pos":
            pos = re.search(r'position="(\d+)"', labels)
            if pos:
                per_pos[int(pos.group(1))] = per_pos.get(int(pos.group(1)), 0.0) + value
    out["accepted_per_position"] = [per_pos[k] for k in sorted(per_pos)]
    return out
