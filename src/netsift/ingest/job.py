"""``netsift ingest``: captures -> Parquet packet dataset, in parallel over files.

Each input is read and written by one worker process (files are independent, so the
speed-up is close to linear in cores). The parent owns the manifest and the progress
bar; workers report bytes read through a shared counter.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from netsift import store
from netsift.errors import CaptureError, NetsiftError, UsageError
from netsift.ingest.reader import CaptureReader, ReadStats

STDIN = "-"


@dataclass
class InputResult:
    """The outcome for one input: ingested, already current, or failed with a reason."""

    path: str
    status: str  # "ingested" | "current" | "failed" | "not-a-capture"
    packets: int = 0
    files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    error: str = ""
    format: str = ""


@dataclass
class IngestReport:
    out: str
    results: list[InputResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def packets(self) -> int:
        return sum(r.packets for r in self.results)

    @property
    def failed(self) -> list[InputResult]:
        return [r for r in self.results if r.status == "failed"]


def expand_inputs(inputs: list[str], exclude: Path | None = None) -> list[tuple[str, bool]]:
    """Files to read as (path, named_explicitly); directories expand recursively.

    Hidden files and names starting with ``_`` are skipped inside directories, as is
    ``exclude`` (the output directory, if it lies inside an input).
    """
    found: list[tuple[str, bool]] = []
    excluded = exclude.resolve() if exclude else None
    for item in inputs:
        if item == STDIN:
            found.append((item, True))
            continue
        if not os.path.isdir(item):
            found.append((item, True))
            continue
        inside = []
        for dirpath, dirnames, filenames in os.walk(item):
            here = Path(dirpath).resolve()
            if excluded and (here == excluded or excluded in here.parents):
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
            inside += [os.path.join(dirpath, f) for f in sorted(filenames)
                       if not f.startswith((".", "_"))]
        if not inside:
            raise UsageError(f"{item}: directory holds no files to ingest")
        found += [(p, False) for p in inside]
    if not found:
        raise UsageError("no inputs given")
    return found


_progress_counter = None


def _init_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter


def _counted(reader: CaptureReader) -> Iterator:
    """The reader's batches, publishing bytes read to the shared progress counter."""
    seen = 0
    for batch in reader:
        if _progress_counter is not None:
            with _progress_counter.get_lock():
                _progress_counter.value += reader.stats.bytes_read - seen
        seen = reader.stats.bytes_read
        yield batch
    if _progress_counter is not None:
        with _progress_counter.get_lock():
            _progress_counter.value += reader.stats.bytes_read - seen


def ingest_one(path: str, explicit: bool, out: str, key: str, batch_rows: int) -> InputResult:
    """Read one input and commit its partition files (runs in a worker process)."""
    name = "stdin" if path == STDIN else path
    reader = CaptureReader(path, batch_rows=batch_rows, name=name)
    try:
        rows, files = store.write_stream(_counted(reader), Path(out), key)
    except CaptureError as exc:
        if not explicit and reader.stats.format == "":
            return InputResult(path, "not-a-capture", error=str(exc))
        return InputResult(path, "failed", error=str(exc), skipped=reader.stats.skipped)
    return _result(path, reader.stats, rows, files)


def _result(path: str, stats: ReadStats, rows: int, files: list[str]) -> InputResult:
    return InputResult(path, "ingested", packets=rows, files=files, skipped=stats.skipped,
                       format=stats.format + (f"+{stats.compression}" if stats.compression
                                              else ""))


def ingest(inputs: list[str], out: str | os.PathLike, *, jobs: int | None = None,
           batch_rows: int = 256 * 1024, force: bool = False,
           on_progress: Callable[[int, int], None] | None = None,
           on_result: Callable[[InputResult], None] | None = None) -> IngestReport:
    """Ingest captures (files, directories, ``-`` for stdin) into the dataset at ``out``.

    Inputs already ingested unchanged are skipped unless ``force``. ``on_progress(done,
    total)`` is called with bytes, ``on_result`` once per input. A capture that cannot be
    read is reported as failed; the others still complete.
    """
    root = Path(out)
    started = time.monotonic()
    report = IngestReport(out=str(root))
    candidates = expand_inputs(list(inputs), exclude=root)
    with store.DatasetLock(root):
        manifest = store.Manifest.load(root)
        todo = [(path, explicit, ident.key if ident else f"stdin-{uuid.uuid4().hex[:12]}")
                for path, explicit, ident in
                plan_inputs(candidates, root, manifest, report, on_result, force)]
        total = sum(os.path.getsize(p) for p, _, _ in todo if p != STDIN and
                    os.path.isfile(p))
        _run(todo, root, batch_rows, jobs, manifest, report, total, on_progress, on_result)
    report.seconds = time.monotonic() - started
    return report


def plan_inputs(candidates: list[tuple[str, bool]], root: Path, manifest: store.Manifest,
                report: IngestReport, on_result, force: bool
                ) -> list[tuple[str, bool, store.InputIdentity | None]]:
    """The inputs to read, as (path, named explicitly, identity; None for stdin).

    Reports an input that cannot be stat'ed as failed and one the manifest holds
    unchanged as current (unless ``force``), and removes the files of an earlier version
    of a changed input. An input named twice is read once.
    """
    todo: list[tuple[str, bool, store.InputIdentity | None]] = []
    seen: set[str] = set()
    for path, explicit in candidates:
        if path == STDIN:
            todo.append((path, explicit, None))
            continue
        if path in seen:
            continue
        seen.add(path)
        try:
            ident = store.InputIdentity.of(path)
        except FileNotFoundError:
            _emit(report, on_result, InputResult(path, "failed", error=f"{path}: no such file"))
            continue
        except OSError as exc:
            _emit(report, on_result, InputResult(path, "failed", error=f"{path}: {exc.strerror}"))
            continue
        if not force and manifest.is_current(ident):
            _emit(report, on_result, InputResult(path, "current"))
            continue
        for stale in manifest.stale_files(ident):
            (root / stale).unlink(missing_ok=True)
        todo.append((path, explicit, ident))
    return todo


def _emit(report: IngestReport, on_result, result: InputResult) -> None:
    report.results.append(result)
    if on_result:
        on_result(result)


def _finish(result: InputResult, manifest: store.Manifest, report, on_result) -> None:
    if result.status == "ingested" and result.path != STDIN:
        ident = store.InputIdentity.of(result.path)
        manifest.record(ident.path, {
            "size": ident.size, "mtime_ns": ident.mtime_ns, "files": result.files,
            "packets": result.packets, "skipped": result.skipped, "format": result.format,
            "ingested_at": store.now_iso(),
        })
    _emit(report, on_result, result)


def _run(todo, root, batch_rows, jobs, manifest, report, total, on_progress, on_result):
    if not todo:
        return
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    counter = mp.get_context("fork").Value("q", 0)
    if jobs == 1 or any(p == STDIN for p, _, _ in todo):
        # In-process: stdin cannot be handed to a worker, and one file gains nothing.
        _init_worker(counter)
        try:
            for path, explicit, key in todo:
                result = _guarded(path, explicit, str(root), key, batch_rows)
                _finish(result, manifest, report, on_result)
                if on_progress:
                    on_progress(counter.value, total)
        finally:
            _init_worker(None)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"),
                             initializer=_init_worker, initargs=(counter,)) as pool:
        pending = {pool.submit(_guarded, p, e, str(root), k, batch_rows) for p, e, k in todo}
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                _finish(future.result(), manifest, report, on_result)
            if on_progress:
                on_progress(counter.value, total)


def _guarded(path, explicit, out, key, batch_rows) -> InputResult:
    try:
        return ingest_one(path, explicit, out, key, batch_rows)
    except NetsiftError:
        raise
    except OSError as exc:
        # Disk errors abort the run (StorageError above); a read error fails this input.
        return InputResult(path, "failed", error=f"{path}: {exc.strerror or exc}")
