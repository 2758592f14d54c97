"""``netsift ingest --engine spark``: captures -> the packet dataset, decoded on Spark executors.

Flow::

    driver   list the inputs (directories walked as by the embedded ingest), stat them,
             drop those the manifest records as ingested and unchanged
    job 1    only inputs larger than the split size: each range of split-size bytes is
             indexed on an executor (netsift.ingest.pcap_split: record boundaries and
             counts of a plain pcap); the driver keeps the splits of files whose ranges
             agree, and reads any other file whole
    job 2    spark.range(T, numPartitions=T).mapInArrow(...): task t reads its share of
             files and ranges with the embedded reader (CaptureReader: pcap, pcapng,
             tshark JSON/EK, compressed) and writes them through netsift.store (temp file,
             fsync, rename into DIR/date=/hour=); it returns one JSON result per piece
    driver   merge the results per input, record them in DIR/_manifest.json

The driver reads no packet bytes: it lists and stats files and collects one small result
per piece. Work is balanced by bytes (longest first, each piece to the least loaded
task). Tasks write their own files, so the dataset is the embedded engine's: the same
rows, types (unsigned integers, 16-byte addresses), layout, manifest and atomicity. A
whole input is written as ``<input-key>.parquet`` per hour, as by the embedded ingest; a
split one as ``<input-key>-NNNN.parquet`` per split and hour. ``record`` counts from the
start of the capture in either case (a split's first record number comes from job 1).

Provenance: ``source`` is the input as named on the driver (the path given, or
directory-given-joined-with-the-relative-path), exactly as the embedded ingest names it.
Executors open the path's absolute form, so inputs and DIR must be on a filesystem every
executor mounts at the same path as the driver, and netsift must be installed where the
executors run Python.

Errors: a capture that cannot be read is reported as failed (one line, no traceback) and
the rest still ingest; damaged records are counted skips, as in the embedded ingest. A
failed split fails its input, whose other splits' files are removed. A disk error
(:class:`StorageError`) on an executor ends the run after the other results are recorded.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from netsift import store
from netsift.errors import CaptureError, NetsiftError, StorageError, UsageError
from netsift.ingest.job import STDIN, IngestReport, InputResult, _finish, expand_inputs, plan_inputs
from netsift.ingest.reader import DEFAULT_BATCH_ROWS, CaptureReader
from netsift.platform.spark import quiet_pandas_check

#: Split size when the session does not set ``spark.sql.files.maxPartitionBytes``.
DEFAULT_SPLIT_BYTES = 128 * 1024 * 1024
#: What opening, writing and committing one input costs, in bytes of reading: weighs
#: many small files against a few large ones when pieces are shared out to tasks.
PIECE_COST_BYTES = 4 * 1024 * 1024
RESULT_SCHEMA = "result string"
# Spark has no unsigned types: widen them as its Parquet reader does.
SPARK_TYPES = {pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}


def spark_type(dtype: pa.DataType) -> pa.DataType:
    """A packet column's Arrow type as Spark holds it: unsigned integers widened to the
    next signed width, fixed-size binary (addresses) as variable-length binary."""
    if pa.types.is_fixed_size_binary(dtype):
        return pa.binary()
    return SPARK_TYPES.get(dtype, dtype)


# -- executor side: no pyspark here -------------------------------------------------------

class CaptureTask:
    """One capture, or the records ``[start, stop)`` (byte offsets) of a plain pcap, read
    where a Spark task runs.

    ``location`` is the path the executor opens; ``name`` the rows' ``source`` (default:
    ``location``). ``record_base`` is added to ``record``: the records before ``start``.
    """

    def __init__(self, location: str, *, name: str | None = None, start: int = 0,
                 stop: int | None = None, record_base: int = 0,
                 batch_rows: int = DEFAULT_BATCH_ROWS):
        self.name = name or location
        self.record_base = record_base
        self.error: str | None = None
        self._range = None
        if stop is None:
            self.reader = CaptureReader(location, batch_rows=batch_rows, name=self.name)
        else:
            from netsift.ingest.pcap_split import PcapRange

            self._range = PcapRange(location, start, stop)
            self.reader = CaptureReader(self._range, batch_rows=batch_rows, name=self.name)

    @property
    def format(self) -> str:
        """``pcap``, ``pcapng+gzip``, ``tshark-ek+zstd``, ...; empty if never recognised."""
        stats = self.reader.stats
        return stats.format + (f"+{stats.compression}" if stats.compression else "")

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Packet batches; raises :class:`CaptureError` (or ``OSError``) as the reader."""
        try:
            for batch in self.reader:
                if self.record_base:
                    i = batch.schema.get_field_index("record")
                    batch = batch.set_column(i, "record", pc.add(
                        batch.column(i), pa.scalar(self.record_base, pa.int64())))
                yield batch
        finally:
            if self._range is not None:
                self._range.close()

    def guarded(self) -> Iterator[pa.RecordBatch]:
        """As :meth:`batches`, but a read error ends them and is kept in :attr:`error`
        (the packets before it are kept)."""
        try:
            yield from self.batches()
        except CaptureError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = f"{self.name}: {exc.strerror or exc}"

    def report(self) -> dict:
        """``{"file", "packets", "skipped": {reason: count}, "error", "format"}``."""
        return {"file": self.name, "packets": self.reader.stats.packets,
                "skipped": self.reader.stats.skipped, "error": self.error,
                "format": self.format}


@dataclass(frozen=True)
class Piece:
    """What one task reads: a whole input (``split`` -1) or one split of a plain pcap."""

    path: str  # as named on the driver: the rows' ``source``
    location: str  # the absolute path executors open
    key: str  # the input's store key: names the files written
    size: int  # bytes to read
    explicit: bool = True  # named on the command line, not found in a directory
    split: int = -1
    start: int = 0  # byte offsets, with split >= 0
    stop: int = 0
    record_base: int = 0  # records of the input before ``start``


def ingest_piece(piece: Piece, out: str, batch_rows: int) -> dict:
    """Read one piece and commit its partition files under ``out``; a JSON-able result
    (``status``: ingested, failed, not-a-capture, or fatal for a disk error)."""
    split = piece.split >= 0
    task = CaptureTask(piece.location, name=piece.path, start=piece.start,
                       stop=piece.stop if split else None, record_base=piece.record_base,
                       batch_rows=batch_rows)
    result = {"path": piece.path, "split": piece.split, "status": "ingested", "packets": 0,
              "files": [], "skipped": {}, "error": "", "format": ""}
    key = f"{piece.key}-{piece.split:04d}" if split else piece.key
    try:
        result["packets"], result["files"] = store.write_stream(task.batches(), Path(out), key)
    except CaptureError as exc:
        unknown = not piece.explicit and task.reader.stats.format == ""
        result.update(status="not-a-capture" if unknown else "failed", error=str(exc))
    except StorageError as exc:
        result.update(status="fatal", error=str(exc))
    except OSError as exc:
        result.update(status="failed", error=f"{piece.path}: {exc.strerror or exc}")
    result["skipped"] = task.reader.stats.skipped if result["status"] != "not-a-capture" \
        else {}
    result["format"] = task.format
    return result


def _results(values: list) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([json.dumps(v, sort_keys=True) for v in values], pa.string())],
        names=["result"])


class _IngestTasks:
    """mapInArrow function of job 2: task ids (column ``id``) -> results of its pieces."""

    def __init__(self, tasks: list[list[Piece]], out: str, batch_rows: int):
        self.tasks, self.out, self.batch_rows = tasks, out, batch_rows

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column("id").to_pylist():
                for piece in self.tasks[task]:
                    yield _results([ingest_piece(piece, self.out, self.batch_rows)])


class _IndexTasks:
    """mapInArrow function of job 1: task ids -> [location, split, RangeIndex or None]."""

    def __init__(self, tasks: list[list[tuple[str, int, int, int]]]):
        self.tasks = tasks

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from netsift.ingest.pcap_split import index_range

        for batch in batches:
            for task in batch.column("id").to_pylist():
                found = []
                for location, split, start, stop in self.tasks[task]:
                    try:
                        index = index_range(location, start, stop)
                    except (OSError, ValueError):  # unreadable now: read whole, fail there
                        index = None
                    found.append([location, split, asdict(index) if index else None])
                yield _results(found)


# -- driver side --------------------------------------------------------------------------

def parse_bytes(text: str) -> int:
    """A Spark byte size (``134217728``, ``128m``, ``128MB``, ``1g``) in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)i?b?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(f"not a byte size: {text!r}")
    return int(match.group(1)) * 1024 ** " kmgtp".index(match.group(2).lower() or " ")


def _pack(weights: list[int], tasks: int) -> list[list[int]]:
    """Item indexes in at most ``tasks`` groups of similar total weight: heaviest item
    first, each to the lightest group (longest-processing-time-first)."""
    heap = [(0, t) for t in range(max(1, tasks))]
    groups: list[list[int]] = [[] for _ in heap]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        load, t = heapq.heappop(heap)
        groups[t].append(i)
        heapq.heappush(heap, (load + weights[i], t))
    return [g for g in groups if g]


def _task_count(weights: list[int], split_bytes: int, parallelism: int) -> int:
    return min(len(weights), max(2 * parallelism, math.ceil(sum(weights) / split_bytes)))


def _run_job(spark, function, tasks: int, description: str) -> list:
    """Run ``function`` over ``tasks`` one-id partitions; its decoded JSON results."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    spark.sparkContext.setJobDescription(description)
    try:
        with quiet_pandas_check():
            rows = spark.range(0, tasks, 1, tasks).mapInArrow(function, RESULT_SCHEMA) \
                .collect()
    except (PySparkException, Py4JError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise NetsiftError(f"Spark job failed ({description}): {first.strip()[:300]}") \
            from None
    finally:
        spark.sparkContext.setJobDescription(None)
    return [json.loads(row.result) for row in rows]


def _split_inputs(spark, todo: list[tuple[str, bool, store.InputIdentity]],
                  split_bytes: int) -> list[Piece]:
    """The pieces to read: whole inputs, and the agreed splits of large plain pcaps."""
    pieces: list[Piece] = []
    ranges: list[tuple[str, int, int, int]] = []
    by_location: dict[str, tuple[str, bool, store.InputIdentity]] = {}
    for path, explicit, ident in todo:
        location = os.path.abspath(path)
        if ident.size <= split_bytes:
            pieces.append(Piece(path, location, ident.key, ident.size, explicit))
            continue
        by_location[location] = (path, explicit, ident)
        count = math.ceil(ident.size / split_bytes)
        ranges += [(location, k, k * split_bytes, min((k + 1) * split_bytes, ident.size))
                   for k in range(count)]
    if not ranges:
        return pieces
    from netsift.ingest.pcap_split import RangeIndex, check_ranges

    weights = [stop - start for *_, start, stop in ranges]
    groups = _pack(weights, _task_count(weights, split_bytes,
                                        spark.sparkContext.defaultParallelism))
    found = _run_job(spark, _IndexTasks([[ranges[i] for i in g] for g in groups]),
                     len(groups), f"netsift ingest: index {len(ranges)} ranges of "
                                  f"{len(by_location)} large inputs")
    indexes: dict[str, dict[int, RangeIndex | None]] = {}
    for location, split, index in found:
        indexes.setdefault(location, {})[split] = RangeIndex(**index) if index else None
    for location, (path, explicit, ident) in by_location.items():
        ordered = [indexes[location][k] for k in sorted(indexes[location])]
        if not check_ranges(ident.size, ordered):
            pieces.append(Piece(path, location, ident.key, ident.size, explicit))
            continue
        base = 0
        for k, index in enumerate(ordered):
            if index.records:
                pieces.append(Piece(path, location, ident.key, index.end - index.first,
                                    explicit, k, index.first, index.end, base))
            base += index.records
    return pieces


def _merge(path: str, parts: list[dict], root: Path) -> InputResult:
    """One input's result from those of its pieces; a failed split fails the input."""
    bad = [p for p in parts if p["status"] != "ingested"]
    if bad:
        for part in parts:  # what the other splits committed belongs to no input now
            for name in part["files"]:
                (root / name).unlink(missing_ok=True)
        return InputResult(path, bad[0]["status"], error=bad[0]["error"],
                           skipped=bad[0]["skipped"])
    skipped: dict[str, int] = {}
    for part in parts:
        for reason, count in part["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
    return InputResult(path, "ingested", packets=sum(p["packets"] for p in parts),
                       files=sorted(f for p in parts for f in p["files"]), skipped=skipped,
                       format=parts[0]["format"])


def spark_ingest(inputs: list[str], out: str | os.PathLike, *, master: str | None = None,
                 spark=None, batch_rows: int = DEFAULT_BATCH_ROWS, force: bool = False,
                 split_bytes: int | None = None,
                 on_result: Callable[[InputResult], None] | None = None) -> IngestReport:
    """Ingest captures (files, directories) into the dataset at ``out`` on Spark executors.

    Same inputs, outcome and dataset as :func:`netsift.ingest.job.ingest` (see the module
    docstring). Runs on ``spark`` (a session) or a session for ``master``, started only if
    some input needs reading. Plain pcaps larger than ``split_bytes`` (default: the
    session's ``spark.sql.files.maxPartitionBytes``, 128 MiB) are read in splits of that
    many bytes. ``on_result`` is called once per input.
    """
    root = Path(out).absolute()
    started = time.monotonic()
    report = IngestReport(out=str(out))
    candidates = expand_inputs(list(inputs), exclude=root)
    if any(path == STDIN for path, _ in candidates):
        raise UsageError("Spark executors cannot read standard input: use --engine embedded "
                         "for '-'")
    with store.DatasetLock(root):
        manifest = store.Manifest.load(root)
        todo = plan_inputs(candidates, root, manifest, report, on_result, force)
        if todo:
            _run(todo, root, manifest, report, on_result, spark, master, batch_rows,
                 split_bytes)
    report.seconds = time.monotonic() - started
    return report


def _run(todo, root: Path, manifest, report, on_result, spark, master, batch_rows,
         split_bytes) -> None:
    if spark is None:
        from netsift.platform.spark import get_session

        spark = get_session(master, app_name="netsift-ingest")
    if split_bytes is None:
        split_bytes = parse_bytes(spark.conf.get("spark.sql.files.maxPartitionBytes",
                                                 str(DEFAULT_SPLIT_BYTES)))
    if split_bytes < 1:
        raise UsageError(f"split size must be at least 1 byte, not {split_bytes}")
    pieces = _split_inputs(spark, todo, split_bytes)
    weights = [p.size + PIECE_COST_BYTES for p in pieces]
    groups = _pack(weights, _task_count(weights, split_bytes + PIECE_COST_BYTES,
                                        spark.sparkContext.defaultParallelism))
    tasks = [[pieces[i] for i in group] for group in groups]
    results = _run_job(spark, _IngestTasks(tasks, str(root), batch_rows), len(tasks),
                       f"netsift ingest: {len(pieces)} pieces of {len(todo)} inputs")
    by_path: dict[str, list[dict]] = {}
    for result in results:
        by_path.setdefault(result["path"], []).append(result)
    fatal = [r["error"] for r in results if r["status"] == "fatal"]
    for path, _explicit, _ident in todo:
        parts = sorted(by_path.get(path, []), key=lambda r: r["split"])
        if not parts or any(r["status"] == "fatal" for r in parts):
            continue
        _finish(_merge(path, parts, root), manifest, report, on_result)
    if fatal:
        raise StorageError(fatal[0])
