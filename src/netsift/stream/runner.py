"""``netsift stream``: the batch pipeline over an unbounded input, one closed window at a time.

packets (spool files or a live capture) -> WindowBuffer (watermark) -> closed windows ->
the same feature engine as batch -> optional fitted model -> features/, scores/,
alerts.jsonl, with a checkpoint after every spool file (see checkpoint.py).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from netsift.errors import CaptureError, NetsiftError
from netsift.ingest.reader import CaptureReader
from netsift.stream.checkpoint import Checkpoint, Outputs
from netsift.stream.sources import LiveCapture, watch_spool
from netsift.stream.windows import WindowBuffer

log = logging.getLogger("netsift.stream")
NS = 1_000_000_000


@dataclass
class StreamConfig:
    out: Path
    window_s: float = 60.0
    lateness_s: float = 5.0
    node: str = "src"
    validated_only: bool = False
    model: Path | None = None
    checkpoint: Path | None = None  # default: OUT/_checkpoint
    settle_s: float = 5.0
    poll_s: float = 0.5
    drain: bool = False  # spool: process what is there, close every window, stop
    batch_rows: int = 256 * 1024
    status: Callable[[str], None] | None = None  # receives the status line

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint or self.out / "_checkpoint"


@dataclass
class StreamStats:
    packets: int = 0
    emitted: int = 0
    windows: int = 0  # host-windows written
    alerts: int = 0
    failed_files: list[str] = field(default_factory=list)
    emit_latency_s: list[float] = field(default_factory=list)


class StreamJob:
    """Runs the stream pipeline; ``stop()`` (or SIGTERM/SIGINT) ends it gracefully."""

    def __init__(self, config: StreamConfig, featurize: Callable[[pa.Table], pa.Table],
                 score: Callable[[pa.Table], tuple[pa.Table, list[dict]]] | None = None,
                 columns: list[str] | None = None):
        self.config = config
        self.featurize = featurize
        self.score = score
        self.buffer = WindowBuffer(int(config.window_s * NS), int(config.lateness_s * NS),
                                   columns)
        self.outputs = Outputs(config.out)
        self.checkpoint = Checkpoint(config.checkpoint_dir)
        self.stats = StreamStats()
        self.files_done: set[str] = set()
        self._stop = False
        self._last_status = 0.0
        self._restore()

    # -- lifecycle -----------------------------------------------------------------------

    def _restore(self) -> None:
        loaded = self.checkpoint.load()
        emitted = loaded[0]["emitted"] if loaded else 0
        alerts_bytes = loaded[0]["alerts_bytes"] if loaded else 0
        self.outputs.rollback(emitted, alerts_bytes)
        if loaded is None:
            return
        state, pending = loaded
        if state["window_ns"] != self.buffer.width_ns or state["node"] != self.config.node:
            raise NetsiftError(
                f"{self.config.checkpoint_dir}: checkpoint was made with another window or "
                "node; use a new --out or --checkpoint directory")
        self.buffer.restore(state["buffer"], pending)
        self.files_done = set(state["files_done"])
        self.stats.emitted = emitted
        self.stats.packets = state["packets"]
        self.stats.windows = state["windows"]
        self.stats.alerts = state["alerts"]
        log.info("resumed from checkpoint: %d emissions, %d files done", emitted,
                 len(self.files_done))

    def _save(self) -> None:
        self.checkpoint.save({
            "emitted": self.stats.emitted, "alerts_bytes": self.outputs.alerts_bytes(),
            "files_done": sorted(self.files_done), "buffer": self.buffer.state(),
            "window_ns": self.buffer.width_ns, "node": self.config.node,
            "packets": self.stats.packets, "windows": self.stats.windows,
            "alerts": self.stats.alerts,
        }, self.buffer.pending_table())

    def stop(self, *_args) -> None:
        self._stop = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- processing ----------------------------------------------------------------------

    def _take(self, batch: pa.RecordBatch) -> None:
        self.stats.packets += batch.num_rows
        self.buffer.add(batch)
        closed = self.buffer.close()
        if closed is not None:
            self._emit(closed)

    def _emit(self, packets: pa.Table) -> None:
        started = time.monotonic()
        features = self.featurize(packets)
        scores, alerts = (None, [])
        if self.score is not None and features.num_rows:
            scores, alerts = self.score(features)
        seq = self.stats.emitted + 1
        self.outputs.write(seq, features, scores, alerts)
        self.stats.emitted = seq
        self.stats.windows += features.num_rows
        self.stats.alerts += len(alerts)
        self.stats.emit_latency_s.append(time.monotonic() - started)

    def _status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        self._write_metrics()
        if self.config.status is None:
            return
        wm = self.buffer.max_ts
        lag = f"{time.time() - wm / NS:.1f} s" if wm is not None else "-"
        self.config.status(
            f"{self.stats.packets:,} packets, {self.buffer.open_windows()} windows open, "
            f"{self.stats.windows:,} host-windows out, lag {lag}, {self.stats.alerts} alerts, "
            f"{self.buffer.late} late")

    def _write_metrics(self) -> None:
        """Prometheus text exposition in OUT/metrics.prom (node_exporter textfile style)."""
        lines = [
            f"netsift_stream_packets_total {self.stats.packets}",
            f"netsift_stream_late_packets_total {self.buffer.late}",
            f"netsift_stream_host_windows_total {self.stats.windows}",
            f"netsift_stream_alerts_total {self.stats.alerts}",
            f"netsift_stream_emissions_total {self.stats.emitted}",
            f"netsift_stream_open_packets {self.buffer.pending_rows}",
        ]
        if self.buffer.max_ts is not None:
            lines.append(f"netsift_stream_event_time_seconds {self.buffer.max_ts / NS:.3f}")
        if self.stats.emit_latency_s:
            lines.append(f"netsift_stream_last_emit_seconds {self.stats.emit_latency_s[-1]:.4f}")
        path = self.config.out / "metrics.prom"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)

    def run_spool(self, spool: Path) -> StreamStats:
        for path in watch_spool(spool, self.files_done, settle=self.config.settle_s,
                                poll=self.config.poll_s, drain=self.config.drain,
                                should_stop=lambda: self._stop):
            if path is None:
                self._status()
                continue
            reader = CaptureReader(path, batch_rows=self.config.batch_rows)
            try:
                for batch in reader:
                    self._take(batch)
                    self._status()
                    if self._stop:
                        # Mid-file: the last checkpoint stays authoritative; a restart
                        # rolls back what this file emitted and replays it.
                        return self.stats
            except CaptureError as exc:
                log.error("%s", exc)
                self.stats.failed_files.append(str(path))
            for reason, count in reader.stats.skipped.items():
                log.warning("%s: %d %s", path, count, reason)
            self.files_done.add(path.name)
            self._save()
        if self.config.drain and not self._stop:
            rest = self.buffer.flush()
            if rest is not None:
                self._emit(rest)
            self._save()
        self._status(force=True)
        return self.stats

    def run_interface(self, interface: str, tool: str | None = None,
                      capture_filter: str = "") -> StreamStats:
        capture = LiveCapture(interface, tool, capture_filter)
        try:
            reader = CaptureReader(capture.stdout, name=f"live:{interface}", eager=True,
                                   batch_rows=self.config.batch_rows)
            try:
                for batch in reader:
                    self._take(batch)
                    self._status()
                    if self._stop:
                        capture.stop()
            except CaptureError:
                failure = capture.failure()
                if failure is not None:
                    raise failure from None
                if not self._stop:
                    raise
            failure = capture.failure()
            if failure is not None and not self._stop:
                raise failure
        finally:
            capture.stop()
            self._save()
            self._status(force=True)
        return self.stats


def status_printer(stream=sys.stderr) -> Callable[[str], None]:
    """Overwrite one line on a terminal; otherwise a line every 10 s."""
    tty = stream.isatty()
    last = [0.0]

    def show(line: str) -> None:
        if tty:
            stream.write(f"\r\033[Knetsift stream: {line}")
            stream.flush()
        elif time.monotonic() - last[0] >= 10:
            last[0] = time.monotonic()
            stream.write(f"netsift stream: {line}\n")
            stream.flush()
    return show


def summary(stats: StreamStats) -> str:
    return json.dumps({"packets": stats.packets, "emissions": stats.emitted,
                       "host_windows": stats.windows, "alerts": stats.alerts,
                       "failed_files": stats.failed_files})
