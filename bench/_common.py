"""Helpers shared by the benchmark scripts: cached inputs, timing, tables, JSON output.

Timing reports wall seconds and CPU seconds. CPU seconds include this process and every
child process reaped during the measurement (tools run as subprocesses, worker pools), so
``packets / cpu_seconds`` is a per-core rate even for tools that fan out.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / "data"  # cached inputs (gitignored)
OUT = HERE / "out"  # results (gitignored)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success.

    A cache entry therefore either exists complete or not at all, even if a build is
    interrupted.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Measurement:
    """One timed run: how many packets a tool handled, in how much wall and CPU time."""

    tool: str
    packets: int
    seconds: float
    cpu_seconds: float
    subset: bool = False  # ran on a prefix of the capture (slow peers)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Packets per wall second."""
        return self.packets / self.seconds if self.seconds > 0 else float("nan")

    @property
    def rate_per_cpu(self) -> float:
        """Packets per CPU second (all threads and reaped children)."""
        return self.packets / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["packets_per_second"] = self.rate
        data["packets_per_cpu_second"] = self.rate_per_cpu
        return data


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return (its result, wall seconds, CPU seconds incl. reaped children)."""
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall0, _cpu_seconds() - cpu0


def stream_command(argv: Sequence[str], on_chunk: Callable[[bytes], None],
                   chunk_bytes: int = 1 << 20, **popen) -> int:
    """Run a command, feeding its stdout to ``on_chunk``; raise if it fails."""
    # stderr to a file: a pipe nobody drains could fill up and stall the command.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=err, **popen)
        assert proc.stdout is not None
        with proc.stdout:
            while chunk := proc.stdout.read(chunk_bytes):
                on_chunk(chunk)
        code = proc.wait()
        if code:
            err.seek(0)
            message = err.read().decode(errors="replace")[-500:]
            raise RuntimeError(f"{argv[0]} exited {code}: {message}")
    return code


def warm_page_cache(path: Path, chunk_bytes: int = 16 << 20) -> float:
    """Read a file once so every tool then reads it from memory; return seconds taken."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        buf = bytearray(chunk_bytes)
        view = memoryview(buf)
        while handle.readinto(view):
            pass
    return time.perf_counter() - start


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or value is None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gib = round(int(first.split()[1]) / 2**20, 1)
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(),
            "memory_gib": mem_gib, "kernel": platform.release(),
            "python": platform.python_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                        time.gmtime())}


def command_version(argv: Sequence[str]) -> str:
    """First line a tool prints for its version, or '' if it cannot run."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
