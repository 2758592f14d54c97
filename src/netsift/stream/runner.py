"""``netsift stream``: the batch pipeline over an unbounded input, one closed window at a time.

packets (spool files or a live capture) -> WindowBuffer (watermark) -> closed windows ->
the same feature engine as batch -> optional fitted model -> features/, scores/,
alerts.jsonl, with a checkpoint after every spool file (see checkpoint.py).

Reading and writing overlap: the main thread reads packets and closes windows; one writer
thread featurises, scores and writes each closed window and saves the checkpoints, in
the order they were handed over, so a slow emission never stalls the capture. At most
``emit_queue`` closed emissions wait for the writer; beyond that reading waits.

The checkpoint does not copy the open windows' packets: it lists the spool files that
hold them (``replay``), and a restart reads those again, keeping the packets of windows
still open. A live capture cannot be replayed: its checkpoint is saved after every
emission, and a graceful stop also stores the open windows' packets.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from netsift.errors import CaptureError, NetsiftError
from netsift.ingest.reader import CaptureReader
from netsift.stream.checkpoint import Checkpoint, Outputs
from netsift.stream.sources import LiveCapture, watch_spool
from netsift.stream.windows import Window, WindowBuffer

log = logging.getLogger("netsift.stream")
NS = 1_000_000_000
EARLY_DIVISOR = 10  # a window is featurised early once lateness / 10 past its end


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
    emit_queue: int = 2  # closed emissions waiting for the writer before reading waits
    shards: int | None = None  # featurise in this many threads (default: per core, <= 4)
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
    late: int = 0
    failed_files: list[str] = field(default_factory=list)
    emit_last_s: float | None = None  # a window's closing -> its outputs written
    emit_max_s: float = 0.0
    emit_total_s: float = 0.0
    early_windows: int = 0  # windows written from their early featurisation
    early_stale: int = 0  # featurised early, then more packets came: featurised again


@dataclass
class _Replay:
    """A spool file that holds packets of open windows."""

    name: str
    mtime_ns: int
    max_ts: int  # newest packet taken from it


class StreamJob:
    """Runs the stream pipeline; ``stop()`` (or SIGTERM/SIGINT) ends it gracefully.

    ``featurize`` takes the closed windows' packets as node shards (one table each; see
    WindowBuffer) and returns their feature rows.
    """

    def __init__(self, config: StreamConfig,
                 featurize: Callable[[list[pa.Table]], pa.Table],
                 score: Callable[[pa.Table], tuple[pa.Table, list[dict]]] | None = None,
                 columns: list[str] | None = None, *, shard_key: str | None = None,
                 shards: int = 1):
        self.config = config
        self.featurize = featurize
        self.score = score
        self.buffer = WindowBuffer(int(config.window_s * NS), int(config.lateness_s * NS),
                                   columns, shard_key=shard_key, shards=shards)
        self.outputs = Outputs(config.out)
        self.checkpoint = Checkpoint(config.checkpoint_dir)
        self.stats = StreamStats()
        self.files_done: dict[str, int | None] = {}
        self.replay: list[_Replay] = []
        self._queued = 0  # emissions handed to the writer (the next one gets _queued + 1)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netsift-writer")
        self._inflight: collections.deque[tuple[Future, bool]] = collections.deque()
        self._emissions_waiting = 0
        self._capture: LiveCapture | None = None
        self._ended: set[int] = set()  # windows handed over early (main thread)
        # start -> (packets then, feature rows); the writer thread's alone
        self._early_features: dict[int, tuple[int, pa.Table]] = {}
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
        done = state["files_done"]
        self.files_done = dict.fromkeys(done) if isinstance(done, list) else dict(done)
        self.replay = [_Replay(*entry) for entry in state.get("replay", [])]
        self._queued = self.stats.emitted = emitted
        self.stats.packets = state["packets"]
        self.stats.windows = state["windows"]
        self.stats.alerts = state["alerts"]
        log.info("resumed from checkpoint: %d emissions, %d files done", emitted,
                 len(self.files_done))

    def stop(self, *_args) -> None:
        """End the run soon (safe in a signal handler): a live capture is asked to end."""
        self._stop = True
        if self._capture is not None:
            self._capture.interrupt()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- the writer thread ---------------------------------------------------------------

    def _submit(self, fn: Callable, *args, emission: bool = False) -> None:
        self._inflight.append((self._writer.submit(fn, *args), emission))
        self._emissions_waiting += emission
        self._settle(self.config.emit_queue)

    def _settle(self, limit: int | None) -> None:
        """Collect finished writer tasks, raising their errors; wait while more than
        ``limit`` emissions are unwritten (``None``: wait for every task)."""
        while self._inflight:
            future, emission = self._inflight[0]
            if not future.done() and limit is not None and self._emissions_waiting <= limit:
                return
            self._inflight.popleft()
            self._emissions_waiting -= emission
            future.result()

    def _early(self, window: Window) -> None:
        """Featurise a window that has ended but not closed (WindowBuffer.ended)."""
        self._early_features[window.start_ns] = (window.rows, self.featurize(window.shards))

    def _emit(self, seq: int, windows: list[Window], closed_at: float) -> None:
        parts = []
        for window in windows:
            early = self._early_features.pop(window.start_ns, None)
            if early is not None and early[0] == window.rows:
                self.stats.early_windows += 1
                parts.append(early[1])  # nothing arrived since: the same packets
            else:
                self.stats.early_stale += early is not None
                parts.append(self.featurize(window.shards))
        features = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        scores, alerts = (None, [])
        if self.score is not None and features.num_rows:
            scores, alerts = self.score(features)
        self.outputs.write(seq, features, scores, alerts)
        latency = time.monotonic() - closed_at
        s = self.stats
        s.emitted, s.windows, s.alerts = seq, s.windows + features.num_rows, \
            s.alerts + len(alerts)
        s.emit_last_s, s.emit_max_s = latency, max(s.emit_max_s, latency)
        s.emit_total_s += latency

    def _save(self, snapshot: dict, pending: pa.Table | None) -> None:
        """Runs after every emission handed over before it: their outputs are written."""
        self.checkpoint.save({
            **snapshot, "alerts_bytes": self.outputs.alerts_bytes(),
            "window_ns": self.buffer.width_ns, "node": self.config.node,
            "windows": self.stats.windows, "alerts": self.stats.alerts,
        }, pending)

    def _checkpoint(self, pending: pa.Table | None = None) -> None:
        until = self.buffer.closed_until
        self.replay = [r for r in self.replay if until is None or r.max_ts >= until]
        self._submit(self._save, {
            "emitted": self._queued, "files_done": dict(self.files_done),
            "replay": [[r.name, r.mtime_ns, r.max_ts] for r in self.replay],
            "buffer": self.buffer.state(), "packets": self.stats.packets,
        }, pending)

    # -- processing ----------------------------------------------------------------------

    def _take(self, batch: pa.RecordBatch) -> int | None:
        """Add a batch; hand over what it closed. The newest packet time kept, or None."""
        self.stats.packets += batch.num_rows
        newest = self.buffer.add(batch)
        closed = self.buffer.close_windows()
        if closed:
            self._hand_over(closed)
        if self.buffer.lateness_ns:
            # A window that ended a tenth of the lateness ago is featurised now, while the
            # rest of the lateness passes; at its closing that result is written at once
            # if no packet of it came meanwhile (else it is featurised again).
            for start in self.buffer.ended(self.buffer.lateness_ns // EARLY_DIVISOR):
                if start not in self._ended:
                    self._ended.add(start)
                    self._submit(self._early, self.buffer.snapshot(start), emission=True)
        return newest

    def _hand_over(self, windows: list[Window]) -> None:
        self._queued += 1
        self._submit(self._emit, self._queued, windows, time.monotonic(), emission=True)
        until = self.buffer.closed_until
        self._ended = {start for start in self._ended if start >= until}

    def _status(self, force: bool = False, show: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last_status < 1.0:
            return
        self._last_status = now
        self.stats.late = self.buffer.late
        self._write_metrics()
        if self.config.status is None or not show:
            return
        newest = self.buffer.max_ts
        lag = f"{time.time() - newest / NS:.1f} s" if newest is not None else "-"
        self.config.status(
            f"{self.stats.packets:,} packets, {self.buffer.open_windows()} windows open, "
            f"{self.stats.windows:,} host-windows out, lag {lag}, {self.stats.alerts} alerts, "
            f"{self.buffer.late} late")

    def _write_metrics(self) -> None:
        """Prometheus text exposition in OUT/metrics.prom (node_exporter textfile style)."""
        s = self.stats
        lines = [
            f"netsift_stream_packets_total {s.packets}",
            f"netsift_stream_late_packets_total {self.buffer.late}",
            f"netsift_stream_host_windows_total {s.windows}",
            f"netsift_stream_alerts_total {s.alerts}",
            f"netsift_stream_emissions_total {s.emitted}",
            f"netsift_stream_early_windows_total {s.early_windows}",
            f"netsift_stream_early_stale_total {s.early_stale}",
            f"netsift_stream_open_windows {self.buffer.open_windows()}",
            f"netsift_stream_open_packets {self.buffer.pending_rows}",
        ]
        if self.buffer.max_ts is not None:
            lines.append(f"netsift_stream_event_time_seconds {self.buffer.max_ts / NS:.3f}")
        if s.emit_last_s is not None:
            lines += [f"netsift_stream_last_emit_seconds {s.emit_last_s:.4f}",
                      f"netsift_stream_emit_seconds_max {s.emit_max_s:.4f}",
                      f"netsift_stream_emit_seconds_sum {s.emit_total_s:.4f}"]
        path = self.config.out / "metrics.prom"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)

    def _finish(self) -> None:
        """Wait for the writer; raise what failed there."""
        try:
            self._settle(None)
        finally:
            self._writer.shutdown(wait=True)

    def _replay_files(self, spool: Path) -> None:
        """After a restart: read again the files that hold packets of open windows."""
        for entry in self.replay:
            path = spool / entry.name
            try:
                changed = path.stat().st_mtime_ns != entry.mtime_ns
            except FileNotFoundError:
                changed = True
            if changed:
                log.warning("%s: gone or rewritten since it was read; its packets in open "
                            "windows are lost", path)
                continue
            try:
                for batch in CaptureReader(path, batch_rows=self.config.batch_rows):
                    self.buffer.add(batch, replay=True)
            except CaptureError:
                pass  # it failed the same way when it was first read

    def run_spool(self, spool: Path) -> StreamStats:
        try:
            self._replay_files(spool)
            self._run_spool(spool)
        finally:
            self._finish()
        self._status(force=True)
        return self.stats

    def _run_spool(self, spool: Path) -> None:
        for path in watch_spool(spool, self.files_done, settle=self.config.settle_s,
                                poll=self.config.poll_s, drain=self.config.drain,
                                should_stop=lambda: self._stop):
            if path is None:
                self._settle(self.config.emit_queue)
                self._status()
                continue
            try:
                mtime_ns = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # rotated away before it could be read
            reader = CaptureReader(path, batch_rows=self.config.batch_rows)
            newest = None
            try:
                for batch in reader:
                    kept = self._take(batch)
                    if kept is not None:
                        newest = kept if newest is None else max(newest, kept)
                    self._status()
                    if self._stop:
                        # Mid-file: the last checkpoint stays authoritative; a restart
                        # rolls back what this file emitted and replays it.
                        return
            except CaptureError as exc:
                log.error("%s", exc)
                self.stats.failed_files.append(str(path))
            for reason, count in reader.stats.skipped.items():
                log.warning("%s: %d %s", path, count, reason)
            self.files_done[path.name] = mtime_ns
            if newest is not None:
                self.replay.append(_Replay(path.name, mtime_ns, newest))
            self._checkpoint()
        if self.config.drain and not self._stop:
            rest = self.buffer.flush_windows()
            if rest:
                self._hand_over(rest)
            self._checkpoint()

    def run_interface(self, interface: str, tool: str | None = None,
                      capture_filter: str = "") -> StreamStats:
        if self.replay:
            raise NetsiftError(
                f"{self.config.checkpoint_dir}: the checkpoint holds open windows of spool "
                "files; resume with --spool, or use a new --out or --checkpoint directory")
        capture = self._capture = LiveCapture(interface, tool, capture_filter)
        ok = False
        try:
            self._read_capture(capture, interface)
            ok = True
        finally:
            capture.stop()
            try:
                self._settle(None)
                self._checkpoint(self.buffer.pending_table())
            finally:
                self._finish()
            self._status(force=True, show=ok)  # a failure is reported on its own line
        return self.stats

    def _read_capture(self, capture: LiveCapture, interface: str) -> None:
        reader = CaptureReader(capture.stdout, name=f"live:{interface}", eager=True,
                               batch_rows=self.config.batch_rows)
        try:
            for batch in reader:
                emitted = self._queued
                self._take(batch)
                if self._queued != emitted:
                    # Nothing to replay a live capture from: record each emission.
                    self._checkpoint()
                self._status()
                if self._stop:
                    capture.interrupt()
        except CaptureError:
            failure = capture.failure(wait=5)
            if failure is not None:
                raise failure from None
            if not self._stop:
                raise
        failure = capture.failure(wait=5)
        if failure is not None and not self._stop:
            raise failure


def status_printer(stream=None, interval: float = 10.0) -> Callable[[str], None]:
    """Overwrite one line on a terminal; otherwise a line every ``interval`` seconds."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [None]

    def show(line: str) -> None:
        if tty:
            stream.write(f"\r\033[Knetsift stream: {line}")
            stream.flush()
        elif last[0] is None or time.monotonic() - last[0] >= interval:
            last[0] = time.monotonic()
            stream.write(f"netsift stream: {line}\n")
            stream.flush()
    return show


def summary(stats: StreamStats) -> str:
    return json.dumps({"packets": stats.packets, "emissions": stats.emitted,
                       "host_windows": stats.windows, "alerts": stats.alerts,
                       "late_packets": stats.late, "failed_files": stats.failed_files})
