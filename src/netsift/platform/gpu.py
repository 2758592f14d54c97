"""GPU discovery and the device choice: what runs on an NVIDIA GPU on this machine.

Three things decide it, each found without loading anything onto a GPU:

- **torch**: a CUDA build whose runtime sees a GPU runs the autoencoder and distributed
  training (``pip install 'netsift[torch]'``);
- **nvidia-smi**: the driver's tool, listing the GPUs the machine has;
- **cudf-polars**: the Polars GPU engine (``pip install 'netsift[gpu]'``), which runs the
  feature query when the query uses only what it supports (:func:`polars_gpu_blockers`).

A device request is ``auto``, ``cpu`` or ``gpu`` (``cuda`` is the same as ``gpu``).
:func:`resolve_device` turns it into ``"cpu"`` or ``"cuda"`` for one purpose (``torch`` or
``polars``): ``auto`` takes the GPU where that purpose can use one and the CPU otherwise,
and says which, with the reason, once per process (one INFO line on the
``netsift.platform`` logger); ``gpu`` where no GPU can be used is a
:class:`~netsift.errors.UsageError` of one line that says why.

>>> resolve_device("cpu")
'cpu'
>>> polars_engine_for("cpu")
'streaming'
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from netsift.errors import UsageError

log = logging.getLogger("netsift.platform")

DEVICES = ("auto", "cpu", "gpu")
PURPOSES = ("torch", "polars")
_NVIDIA_SMI_TIMEOUT_S = 10.0

# Constructs of a Polars plan (as LazyFrame.explain() prints them) that cudf-polars does
# not execute, and why; checked against cudf-polars 26.10. A group_by aggregation runs on
# the GPU only as an aggregation of element-wise expressions.
_UNSUPPORTED_PLAN = {
    ".python_udf()": "Python functions (map_elements, map_batches) run only on the CPU",
    ".mode()": "mode() in a group_by is not element-wise (count values, then take a max)",
    ".bin.": "binary expressions (bin.*): cudf has no binary type",
    ".arr.": "Array expressions (arr.*): cudf-polars passes Array columns through only",
    ".drop_nulls()": "drop_nulls() in a group_by is not element-wise",
}
# Polars column types cudf-polars cannot hold (it raises for them when translating).
_UNSUPPORTED_DTYPES = ("Binary", "Categorical", "Enum", "Object", "Time", "Int128")


@dataclass(frozen=True)
class Discovery:
    """What this machine offers, each part with the reason it cannot be used (or "").

    ``gpus``: names nvidia-smi lists. ``torch_version`` / ``torch_cuda``: the installed
    torch and the CUDA version it was built for (None: not installed / CPU-only build);
    ``torch_gpus``: GPUs the torch CUDA runtime sees. ``cudf_polars``: its version, None
    when not installed.
    """

    gpus: tuple[str, ...]
    nvidia_smi_reason: str
    torch_version: str | None
    torch_cuda: str | None
    torch_gpus: int
    torch_reason: str
    cudf_polars: str | None
    cudf_polars_reason: str

    def reason(self, purpose: str) -> str:
        """Why ``purpose`` cannot use a GPU here; "" when it can."""
        if purpose == "torch":
            return self.torch_reason
        if self.cudf_polars_reason:
            return self.cudf_polars_reason
        if not self.gpus and not self.torch_gpus:
            return self.nvidia_smi_reason or "no NVIDIA GPU found"
        return ""

    def lines(self) -> list[str]:
        """The discovery as short ``name: finding`` lines, for reports."""
        return [
            f"nvidia-smi: {', '.join(self.gpus) if self.gpus else self.nvidia_smi_reason}",
            "torch: " + (self.torch_reason or f"{self.torch_version}, CUDA {self.torch_cuda}, "
                                              f"{self.torch_gpus} GPU(s)"),
            "cudf-polars: " + (self.cudf_polars_reason or str(self.cudf_polars)),
        ]


@functools.cache
def nvidia_smi() -> tuple[tuple[str, ...], str]:
    """GPU names from ``nvidia-smi``, and why none were found (or "")."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return (), "no nvidia-smi on PATH (no NVIDIA driver)"
    try:
        done = subprocess.run([path, "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (), f"nvidia-smi did not answer: {exc}"
    names = tuple(line.strip() for line in done.stdout.splitlines() if line.strip())
    if done.returncode != 0 or not names:
        said = (done.stderr or done.stdout).strip().splitlines()
        return (), f"nvidia-smi lists no GPU ({said[0] if said else f'exit {done.returncode}'})"
    return names, ""


@functools.cache
def _torch_status() -> tuple[str | None, str | None, int, str]:
    if importlib.util.find_spec("torch") is None:
        return None, None, 0, "torch is not installed (pip install 'netsift[torch]')"
    import torch

    if torch.version.cuda is None:
        return torch.__version__, None, 0, f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        why = nvidia_smi()[1] or "the CUDA runtime sees no GPU"
        return torch.__version__, torch.version.cuda, 0, f"torch sees no CUDA GPU ({why})"
    return torch.__version__, torch.version.cuda, torch.cuda.device_count(), ""


@functools.cache
def _cudf_polars_status() -> tuple[str | None, str]:
    # find_spec, not import: importing cudf-polars loads the CUDA libraries (seconds).
    if importlib.util.find_spec("cudf_polars") is None:
        return None, "cudf-polars is not installed (pip install 'netsift[gpu]')"
    try:
        return importlib.metadata.version("cudf-polars-cu12"), ""
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.startswith("cudf-polars") or name.startswith("cudf_polars"):
            return dist.version, ""
    return "unknown version", ""


_NOT_ASKED = "not looked for (not needed)"


def discover(purpose: str | None = None) -> Discovery:
    """Discover torch, nvidia-smi and cudf-polars (each once per process, then cached).

    ``purpose="polars"`` without cudf-polars installed asks neither nvidia-smi nor torch
    (importing torch takes about a second of every feature run): their fields then say
    they were not looked at.
    """
    cudf_polars, cudf_polars_reason = _cudf_polars_status()
    if purpose == "polars" and cudf_polars_reason:
        return Discovery((), _NOT_ASKED, None, None, 0, _NOT_ASKED, cudf_polars,
                         cudf_polars_reason)
    gpus, smi_reason = nvidia_smi()
    torch_version, torch_cuda, torch_gpus, torch_reason = _torch_status()
    return Discovery(gpus, smi_reason, torch_version, torch_cuda, torch_gpus, torch_reason,
                     cudf_polars, cudf_polars_reason)


def clear_cache() -> None:
    """Forget what discovery found and what was said (for tests, or after installing)."""
    nvidia_smi.cache_clear()
    _torch_status.cache_clear()
    _cudf_polars_status.cache_clear()
    _said.clear()


_said: set[str] = set()


def say_once(message: str) -> None:
    """Log ``message`` (INFO, ``netsift.platform``) the first time only."""
    if message not in _said:
        _said.add(message)
        log.info("%s", message)


def check_device(requested: str) -> str:
    """``requested`` normalised to one of :data:`DEVICES` (``cuda`` -> ``gpu``)."""
    device = "gpu" if requested == "cuda" else requested
    if device not in DEVICES:
        raise UsageError(f"device must be auto, cpu or gpu, not {requested!r}")
    return device


def resolve_device(requested: str = "auto", purpose: str = "torch") -> str:
    """``"cpu"`` or ``"cuda"``: where ``purpose`` (``torch`` or ``polars``) runs.

    ``cpu`` never looks for a GPU. ``auto`` picks the GPU when ``purpose`` can use one and
    says which it picked, once; ``gpu`` raises :class:`UsageError` when it cannot.
    """
    requested = check_device(requested)
    device, reason = _resolve(requested, purpose)
    if requested == "auto":
        what = "torch" if purpose == "torch" else "the Polars engine"
        say_once(f"device auto: {what} runs on the CPU: {reason}" if device == "cpu"
                 else f"device auto: {what} runs on the GPU")
    return device


def _resolve(device: str, purpose: str) -> tuple[str, str]:
    """(resolved device, why not the GPU); raises for ``gpu`` where none can be used."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, not {purpose!r}")
    if device == "cpu":
        return "cpu", "as requested"
    reason = discover(purpose).reason(purpose)
    if reason and device == "gpu":
        raise UsageError(f"device gpu: {reason}; use device cpu or auto")
    return ("cpu", reason) if reason else ("cuda", "")


def polars_engine_for(device: str):
    """The ``LazyFrame.collect`` engine for a resolved device: ``"streaming"`` on the CPU,
    ``pl.GPUEngine(raise_on_fail=True)`` on ``"cuda"`` (or ``"cuda:N"``), which raises
    rather than falls back silently to the CPU when the query cannot run there."""
    if device == "cpu":
        return "streaming"
    if not device.startswith("cuda"):
        raise ValueError(f"a resolved device is 'cpu' or 'cuda[:N]', not {device!r}")
    import polars as pl

    index = device.partition(":")[2]
    return pl.GPUEngine(device=int(index) if index else None, raise_on_fail=True)


def polars_gpu_blockers(query, input_schema: Mapping | None = None) -> dict[str, str]:
    """What in ``query`` (a Polars LazyFrame) cudf-polars cannot run: construct -> why.

    Read from the optimised plan (``query.explain()``), so it works on machines without
    a GPU; ``input_schema`` (column -> Polars type of the frame the query reads) adds
    column types cudf cannot hold. Empty: nothing known stands in the way (the GPU
    engine may still refuse something this list does not name; ``raise_on_fail=True``
    then says what).
    """
    found = {}
    for name, dtype in (input_schema or {}).items():
        base = re.match(r"\w+", str(dtype)).group(0)
        if base in _UNSUPPORTED_DTYPES:
            found[f"{base} column {name}"] = f"cudf-polars cannot hold {base} columns"
    plan = query.explain()
    found.update((construct, why) for construct, why in _UNSUPPORTED_PLAN.items()
                 if construct in plan)
    return found


def engine_for(plan: Callable[[], tuple[object, Mapping | None]], device: str = "cpu",
               cpu_engine="streaming"):
    """The ``LazyFrame.collect`` engine to run a query with on ``device`` (auto|cpu|gpu).

    ``plan`` returns the query and the input schema to check; it is called only once the
    Polars purpose resolves to the GPU (building a plan costs the CPU path for nothing).
    ``cpu`` gives ``cpu_engine``. Otherwise the GPU engine (:func:`polars_engine_for`)
    when :func:`polars_gpu_blockers` finds nothing in the query (and its input schema);
    where something stands in the way, ``auto`` gives ``cpu_engine`` and says why, once,
    and ``gpu`` raises :class:`UsageError` naming the first obstacle.
    """
    requested = check_device(device)
    resolved, reason = _resolve(requested, "polars")
    if resolved == "cpu":
        if requested == "auto":
            say_once(f"device auto: the Polars engine runs on the CPU: {reason}")
        return cpu_engine
    blockers = polars_gpu_blockers(*plan())
    if not blockers:
        if requested == "auto":
            say_once("device auto: the Polars engine runs on the GPU")
        return polars_engine_for("cuda")
    construct, why = next(iter(blockers.items()))
    more = f" and {len(blockers) - 1} more construct(s)" if len(blockers) > 1 else ""
    reason = f"the query uses {construct}: {why}{more}"
    if requested == "gpu":
        raise UsageError(f"device gpu: the Polars GPU engine cannot run the feature query "
                         f"({reason}); use device cpu or auto")
    say_once(f"device auto: the Polars engine runs on the CPU: {reason}")
    return cpu_engine
