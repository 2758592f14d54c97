"""Session fixtures shared by every test: real captures, made once per run.

``tests/`` is on ``sys.path`` (pytest's rootdir-relative import), so tests import the
test-support module as ``import netlab``.
"""

from __future__ import annotations

import subprocess
import sys

import netlab
import pytest


@pytest.fixture(scope="session")
def captures(tmp_path_factory) -> dict[str, netlab.Capture]:
    """Every capture of the standard scenario by name (see :mod:`netlab`).

    Skips when this machine cannot run network namespaces and capture tools.
    """
    reason = netlab.unavailable_reason()
    if reason:
        pytest.skip(f"real captures unavailable: {reason}")
    return netlab.make_captures(tmp_path_factory.mktemp("captures"))


@pytest.fixture
def dead_pid() -> int:
    """The PID of a process that has exited (a killed run's, as its scratch names it)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
