"""``netsift stream --engine spark``: the stream mode as a Spark Structured Streaming query.

Flow, per micro-batch (one spool capture by default)::

    spool ─(driver: complete files)─> CKPT/inbox/NNNNNNNN.txt   one capture path per file
    inbox ─(text file source)─> mapInArrow: decode on executors ─> packet rows
    foreachBatch(batch_id):
        stage the rows as Parquet, CKPT/buffer/batch-ID/window_start=W/ (executors write)
        watermark = newest packet time - lateness; windows ending at or before it close
        closed windows' staged partitions ─> netsift.features.compute_features (Spark)
        ─> OUT/features/part-K.parquet (+ scores, alerts with --model)
        CKPT/state.json: batch id, watermark state, late count, emissions

Why this shape. Spark rejects exact distinct counts and chained aggregations on
streams, and its watermark only acts inside its own stateful operators, so features are
not computed by a streaming aggregation: each closed window is computed by the batch
engine over exactly the packets it holds, and stream equals batch by construction. The
watermark rule is the embedded mode's (:mod:`netsift.stream.windows`): window
``[start, start + window)`` closes once ``newest ts - lateness >= start + window``; a
packet arriving for a closed window is *late*, counted in the state and in
``metrics.prom``, and left out.

Exactly once. ``foreachBatch`` is at-least-once: a batch is replayed after a crash
before Spark commits it. ``state.json`` records the last batch id applied, written
atomically after that batch's outputs; a replayed batch id at or below it is skipped, and
one above it finds the outputs of its earlier attempt rolled back at start-up (emissions
are numbered as in the embedded mode, see :mod:`netsift.stream.checkpoint`) and makes
them again from the same state and the same files (Spark's offset log pins which files a
batch id reads). The spool is published to the inbox by the driver with the embedded
mode's completeness rule (``--settle``), one listing file per capture, renamed into place
with strictly increasing modification times, which is the order the file source reads
them in; the set already published is the inbox itself, so a restart publishes nothing
twice.

Executors open the captures by path and import netsift (for its decoders), so the spool,
the checkpoint and OUT must be on a filesystem the driver and every executor share, and
netsift must be installed where executors run Python.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from netsift.errors import NetsiftError, UsageError
from netsift.features import FeatureSpec, compute_features
from netsift.ingest.spark_ingest import CaptureTask, spark_type
from netsift.platform.spark import quiet_pandas_check
from netsift.schema import PACKET_SCHEMA
from netsift.stream.checkpoint import Checkpoint, Outputs
from netsift.stream.sources import completed_files

log = logging.getLogger("netsift.stream")
NS = 1_000_000_000
WINDOW_COLUMN = "window_start"
REPORT_COLUMN = "_report"  # one JSON row per capture: file, packets, skips, error
_BATCH_DIR = re.compile(r"batch-(\d+)$")
_WINDOW_DIR = re.compile(r"window_start=(-?\d+)$")


@dataclass
class SparkStreamConfig:
    """What to run. Durations are integer nanoseconds; ``settle_s``/``poll_s`` seconds."""

    spool: Path
    out: Path
    window_ns: int = 60 * NS
    lateness_ns: int = 5 * NS
    node: str = "src"
    validated_only: bool = False
    model: Path | None = None
    checkpoint: Path | None = None  # default: OUT/_checkpoint_spark
    settle_s: float = 5.0
    poll_s: float = 1.0
    drain: bool = False  # process the files there now, close every window, stop
    files_per_trigger: int = 1  # captures per micro-batch
    batch_rows: int = 256 * 1024  # packets per Arrow batch on the executors
    status: Callable[[str], None] | None = None  # receives a status line per batch

    @property
    def checkpoint_dir(self) -> Path:
        return (self.checkpoint or self.out / "_checkpoint_spark").absolute()

    def spec(self) -> FeatureSpec:
        return FeatureSpec(window_ns=self.window_ns, node=self.node,
                           validated_only=self.validated_only)


@dataclass
class SparkStreamStats:
    """Totals over the checkpoint's life (a restart continues them)."""

    batches: int = 0  # micro-batches applied
    packets: int = 0  # decoded, timed or not
    late: int = 0  # packets of windows already closed: counted, left out
    untimed: int = 0  # packets without a timestamp (pcapng Simple Packet Blocks)
    emitted: int = 0  # emissions written (OUT/features/part-K.parquet)
    windows: int = 0  # node-windows written
    alerts: int = 0
    files_done: list[str] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return json.dumps({"packets": self.packets, "emissions": self.emitted,
                           "host_windows": self.windows, "alerts": self.alerts,
                           "late_packets": self.late, "batches": self.batches,
                           "failed_files": self.failed_files})


class _Stopping(NetsiftError):
    """A micro-batch began after stop(): left uncommitted, replayed by the next run."""


def staged_arrow_schema(columns: list[str]) -> pa.Schema:
    """Decoded rows as Spark takes them: packet ``columns`` (unsigned widened, addresses
    variable-length binary) and the per-capture report column."""
    fields = [pa.field(name, spark_type(PACKET_SCHEMA.field(name).type)) for name in columns]
    return pa.schema([*fields, pa.field(REPORT_COLUMN, pa.string())])


def decode_captures(columns: list[str], batch_rows: int):
    """A ``mapInArrow`` function: capture paths (column ``value``) -> packet batches.

    Runs on executors, reading each capture as the Spark ingest does
    (:class:`netsift.ingest.spark_ingest.CaptureTask`). After a capture's packets comes
    one row with a null ``ts`` and a JSON ``_report``: ``{"file", "packets", "skipped":
    {reason: count}, "error", "format"}``; a capture that cannot be read keeps the
    packets decoded before the failure and reports the error.
    """
    schema = staged_arrow_schema(columns)
    packet_fields = list(schema)[:-1]

    def decode(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for listing in batches:
            for path in listing.column("value").to_pylist():
                if not path:
                    continue
                task = CaptureTask(path, batch_rows=batch_rows)
                for batch in task.guarded():
                    arrays = [batch.column(f.name).cast(f.type) for f in packet_fields]
                    arrays.append(pa.nulls(batch.num_rows, pa.string()))
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)
                arrays = [pa.nulls(1, f.type) for f in packet_fields]
                arrays.append(pa.array([json.dumps(task.report(), sort_keys=True)],
                                       pa.string()))
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    return decode


def _terminated(query, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` seconds; whether the query has ended (failed or not)."""
    from pyspark.errors import StreamingQueryException

    try:
        return bool(query.awaitTermination(timeout_s))
    except StreamingQueryException:
        return True


def _load_scorer(model: Path | None, spec: FeatureSpec):
    if model is None:
        return None
    from netsift.pipeline import load_scorer

    return load_scorer(model, spec)


class SparkStreamJob:
    """One streaming query over a spool; ``run()`` until drained or ``stop()``.

    ``spark`` is an active session (its master runs the query). Everything the job knows
    lives under the checkpoint directory; a job made on the same directory resumes.
    """

    def __init__(self, config: SparkStreamConfig, spark):
        self.config = config
        self.spark = spark
        self.spec = config.spec()
        if config.lateness_ns < 0:
            raise UsageError("lateness must not be negative")
        if config.files_per_trigger < 1:
            raise UsageError("files per trigger must be at least 1")
        self.score = _load_scorer(config.model, self.spec)
        self.columns = self.spec.input_columns()
        self.dir = config.checkpoint_dir
        self.inbox, self.buffer = self.dir / "inbox", self.dir / "buffer"
        self.query_dir = self.dir / "query"
        self.out = config.out.absolute()
        self.outputs = Outputs(self.out)
        self.checkpoint = Checkpoint(self.dir)
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.buffer.mkdir(parents=True, exist_ok=True)
        self.published: set[str] = set()
        self._listings = 0  # highest listing number in the inbox
        self._last_publish_ms = 0
        self._lock = threading.Lock()  # one micro-batch or flush at a time
        self._stopping = False
        self._failure: BaseException | None = None
        self._restore()

    # -- state ---------------------------------------------------------------------------

    def _restore(self) -> None:
        """Load the last checkpoint, undoing whatever a killed or failed batch left."""
        self.stats = SparkStreamStats()
        self.last_batch = -1
        self.max_ts: int | None = None
        self.closed_until: int | None = None  # every window starting before it is closed
        loaded = self.checkpoint.load()
        state = loaded[0] if loaded else {}
        if state and (state["window_ns"], state["node"], state["validated_only"]) != \
                (self.spec.window_ns, self.spec.node, self.spec.validated_only):
            raise NetsiftError(
                f"{self.dir}: checkpoint was made with another window, node or "
                "--validated-only; use a new --out or --checkpoint directory")
        self.outputs.rollback(state.get("emitted", 0), state.get("alerts_bytes", 0))
        if state:
            self.last_batch = state["batch"]
            self.max_ts, self.closed_until = state["max_ts"], state["closed_until"]
            for name in ("batches", "packets", "late", "untimed", "emitted", "windows",
                         "alerts", "files_done", "failed_files"):
                setattr(self.stats, name, state[name])
        for path in self.inbox.iterdir():
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # a listing a kill left unpublished
            else:
                self.published.add(Path(path.read_text().rstrip("\n")).name)
                self._listings = max(self._listings, int(path.stem))
                self._last_publish_ms = max(self._last_publish_ms,
                                            path.stat().st_mtime_ns // 1_000_000)
        self._collect_garbage()

    def _save(self) -> None:
        s = self.stats
        self.checkpoint.save({
            "batch": self.last_batch, "max_ts": self.max_ts,
            "closed_until": self.closed_until, "emitted": s.emitted,
            "alerts_bytes": self.outputs.alerts_bytes(), "batches": s.batches,
            "packets": s.packets, "late": s.late, "untimed": s.untimed, "windows": s.windows,
            "alerts": s.alerts, "files_done": s.files_done, "failed_files": s.failed_files,
            "window_ns": self.spec.window_ns, "lateness_ns": self.config.lateness_ns,
            "node": self.spec.node, "validated_only": self.spec.validated_only,
        }, None)

    def _staged(self) -> list[tuple[int, Path]]:
        """(batch id, directory) of staged micro-batches, by id."""
        found = []
        for path in self.buffer.iterdir():
            match = _BATCH_DIR.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _window_dirs(self, batch_dir: Path) -> Iterator[tuple[int, Path]]:
        for path in batch_dir.iterdir():
            match = _WINDOW_DIR.match(path.name)
            if match:
                yield int(match.group(1)), path

    def _collect_garbage(self) -> None:
        """Drop staged packets no window needs: attempts after the last applied batch,
        closed (or late) windows, and per-capture reports already applied."""
        for batch_id, batch_dir in self._staged():
            if batch_id > self.last_batch:
                shutil.rmtree(batch_dir, ignore_errors=True)
                continue
            keep = False
            for entry in batch_dir.iterdir():
                match = _WINDOW_DIR.match(entry.name)
                if match and (self.closed_until is None
                              or int(match.group(1)) >= self.closed_until):
                    keep = True
                elif entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
            if not keep:
                shutil.rmtree(batch_dir, ignore_errors=True)

    # -- spool -> inbox ------------------------------------------------------------------

    def publish(self, drain: bool = False) -> int:
        """List the spool's complete, unpublished captures in the inbox; how many."""
        ready = completed_files(self.config.spool, self.published, self.config.settle_s,
                                drain=drain)
        for path in ready:
            text = str(path.absolute())
            if "\n" in text:
                raise UsageError(f"{text!r}: a spool file name with a newline")
            # The file source orders by modification time in milliseconds.
            mtime_ms = max(time.time_ns() // 1_000_000, self._last_publish_ms + 1)
            name = f"{self._listings + 1:08d}.txt"
            tmp = self.inbox / f".{name}.{uuid.uuid4().hex[:8]}"
            tmp.write_text(text + "\n")
            os.utime(tmp, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
            os.replace(tmp, self.inbox / name)
            self._listings += 1
            self._last_publish_ms = mtime_ms
            self.published.add(path.name)
        return len(ready)

    # -- the query -----------------------------------------------------------------------

    def _start(self, available_now: bool):
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(staged_arrow_schema(self.columns))
        listing = self.spark.readStream.format("text") \
            .option("maxFilesPerTrigger", self.config.files_per_trigger) \
            .load(str(self.inbox))
        with quiet_pandas_check():
            packets = listing.mapInArrow(
                decode_captures(self.columns, self.config.batch_rows), schema)
        writer = packets.writeStream.foreachBatch(self._on_batch) \
            .option("checkpointLocation", str(self.query_dir))
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{max(self.config.poll_s, 0.1)} seconds")
        return writer.start()

    def run(self) -> SparkStreamStats:
        """Drain: every complete capture now in the spool, then close every window. Else:
        follow the spool until :meth:`stop`."""
        self._stopping = False
        self.publish(drain=self.config.drain)
        query = self._start(available_now=self.config.drain)
        try:
            while not _terminated(query, self.config.poll_s) and not self._stopping:
                if not self.config.drain:
                    self.publish()
        finally:
            if query.isActive:
                # Micro-batches starting now refuse; wait for a running one to finish.
                # Not holding the lock through query.stop(): it waits for the batch.
                self._stopping = True
                with self._lock:
                    pass
                query.stop()
        self._raise_failure(query)
        if self.config.drain and not self._stopping:
            self.flush()
        self._status()
        return self.stats

    def stop(self, *_args) -> None:
        """End :meth:`run` after the micro-batch in progress (signal-handler safe)."""
        self._stopping = True

    def _raise_failure(self, query) -> None:
        failure, self._failure = self._failure, None
        if failure is not None and not isinstance(failure, _Stopping):
            raise failure
        if failure is None and query.exception() is not None and not self._stopping:
            raise NetsiftError(f"Spark streaming query failed: {query.exception()}")

    def _on_batch(self, batch_df, batch_id: int) -> None:
        try:
            with self._lock:
                if self._stopping:
                    raise _Stopping(f"batch {batch_id} left for the next run")
                if batch_id <= self.last_batch:
                    return  # applied before a crash that kept Spark from committing it
                self._apply(batch_df, batch_id)
        except BaseException as exc:
            self._failure = self._failure or exc
            if not isinstance(exc, _Stopping):
                with self._lock:
                    self._restore()  # the in-memory state may be half a batch ahead
            raise

    def _apply(self, batch_df, batch_id: int) -> None:
        from pyspark.sql import functions as F

        batch_dir = self.buffer / f"batch-{batch_id:08d}"
        width = self.spec.window_ns
        # The same integer window arithmetic as the engines; reports fall in the null one.
        batch_df.withColumn(WINDOW_COLUMN, F.col("ts") - F.pmod(F.col("ts"), F.lit(width))) \
            .write.mode("overwrite").option("compression", "zstd") \
            .partitionBy(WINDOW_COLUMN).parquet(str(batch_dir))
        late = F.lit(0) if self.closed_until is None else \
            F.coalesce(F.sum((F.col("ts") < self.closed_until).cast("int")), F.lit(0))
        row = self._read(batch_dir).agg(
            F.max("ts").alias("max_ts"), F.count("ts").alias("timed"), late.alias("late"),
            F.collect_list(REPORT_COLUMN).alias("reports")).first()
        packets = 0
        for text in row["reports"]:
            report = json.loads(text)
            packets += report["packets"]
            name = Path(report["file"]).name
            for reason, count in report["skipped"].items():
                log.warning("%s: %d %s", name, count, reason)
            if report["error"]:
                log.error("%s", report["error"])
                self.stats.failed_files.append(report["file"])
            self.stats.files_done.append(name)
        self.stats.packets += packets
        self.stats.untimed += packets - row["timed"]
        self.stats.late += row["late"]
        if row["max_ts"] is not None:
            self.max_ts = row["max_ts"] if self.max_ts is None else \
                max(self.max_ts, row["max_ts"])
        if self.max_ts is not None:
            boundary = (self.max_ts - self.config.lateness_ns) // width * width
            if self.closed_until is None or boundary > self.closed_until:
                self._close(boundary)
        self.last_batch = batch_id
        self.stats.batches += 1
        self._save()
        self._collect_garbage()
        self._status()

    def _read(self, path: Path):
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = staged_arrow_schema(self.columns).append(pa.field(WINDOW_COLUMN, pa.int64()))
        return self.spark.read.schema(from_arrow_schema(schema)).parquet(str(path))

    def _close(self, boundary: int) -> None:
        """Emit the windows starting in [closed_until, boundary) and mark them closed."""
        low = self.closed_until
        parts = [path for _batch, batch_dir in self._staged()
                 for start, path in self._window_dirs(batch_dir)
                 if (low is None or start >= low) and start < boundary]
        self.closed_until = boundary
        if parts:
            self._emit(compute_features(sorted(map(str, parts)), self.spec, engine="spark",
                                        spark=self.spark))

    def _emit(self, features: pa.Table) -> None:
        scores, alerts = None, []
        if self.score is not None and features.num_rows:
            scores, alerts = self.score(features)
        seq = self.stats.emitted + 1
        self.outputs.write(seq, features, scores, alerts)
        self.stats.emitted = seq
        self.stats.windows += features.num_rows
        self.stats.alerts += len(alerts)

    def flush(self) -> None:
        """Close every window (the input has ended) and checkpoint."""
        with self._lock:
            if self.max_ts is None:
                return
            boundary = (self.max_ts // self.spec.window_ns + 1) * self.spec.window_ns
            if self.closed_until is None or boundary > self.closed_until:
                self._close(boundary)
                self._save()
                self._collect_garbage()

    # -- reporting -----------------------------------------------------------------------

    def _status(self) -> None:
        s = self.stats
        metrics = [
            f"netsift_stream_packets_total {s.packets}",
            f"netsift_stream_late_packets_total {s.late}",
            f"netsift_stream_host_windows_total {s.windows}",
            f"netsift_stream_alerts_total {s.alerts}",
            f"netsift_stream_emissions_total {s.emitted}",
            f"netsift_stream_batches_total {s.batches}",
        ]
        if self.max_ts is not None:
            metrics.append(f"netsift_stream_event_time_seconds {self.max_ts / NS:.3f}")
        path = self.out / "metrics.prom"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text("\n".join(metrics) + "\n")
        os.replace(tmp, path)
        if self.config.status is not None:
            lag = f"{time.time() - self.max_ts / NS:.1f} s" if self.max_ts is not None else "-"
            self.config.status(f"{s.packets:,} packets, {s.batches} batches, "
                               f"{s.windows:,} host-windows out, lag {lag}, "
                               f"{s.alerts} alerts, {s.late} late")


def run_spark_stream(args) -> int:
    """The CLI entry (``netsift stream --engine spark``): exit status 0, or 1 when a
    capture could not be read."""
    from netsift.platform.spark import get_session
    from netsift.stream.runner import status_printer

    config = SparkStreamConfig(
        spool=Path(args.spool), out=Path(args.out), window_ns=args.window,
        lateness_ns=args.lateness, node=args.node, validated_only=args.validated_only,
        model=Path(args.model) if args.model else None,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        settle_s=args.settle / 1e9, drain=args.drain,
        status=None if args.quiet else status_printer())
    if not config.spool.is_dir():
        raise UsageError(f"{config.spool}: spool directory does not exist")
    _load_scorer(config.model, config.spec())  # refuse before a cluster starts
    failed_before = 0
    with quiet_pandas_check():
        spark = get_session(args.master, app_name="netsift-stream")
        job = SparkStreamJob(config, spark)
        failed_before = len(job.stats.failed_files)
        signal.signal(signal.SIGTERM, job.stop)
        signal.signal(signal.SIGINT, job.stop)
        stats = job.run()
    if not args.quiet:
        print(("\n" if sys.stderr.isatty() else "") + stats.summary())
    return 1 if len(stats.failed_files) > failed_before else 0
