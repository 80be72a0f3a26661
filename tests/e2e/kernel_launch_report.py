"""pytest plugin of test_interpreter_path.py's subprocess: after each test, adds the kernel
launches it made (``vllm_vispec.kernel_dispatch.launches``, counted in this process, where
the offline engine runs) to the JSON file named by ``VISPEC_LAUNCH_REPORT``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPORT_ENV = "VISPEC_LAUNCH_REPORT"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    from vllm_vispec import kernel_dispatch
    before = dict(kernel_dispatch.launches)
    yield
    made = {name: count - before.get(name, 0)
            for name, count in kernel_dispatch.launches.items()}
    path = Path(os.environ[REPORT_ENV])
    report = json.loads(path.read_text()) if path.exists() else {}
    report[item.nodeid] = {name: count for name, count in made.items() if count}
    path.write_text(json.dumps(report, indent=1, sort_keys=True))
