"""Event-time tumbling windows with a watermark, holding only the open windows' packets.

The watermark is the largest packet time seen minus the allowed lateness. Window
``[start, start + width)`` closes once the watermark reaches its end; its packets are then
handed out exactly once. A packet whose window has already closed is *late*: counted and
left out, never silently dropped. Windows are aligned to the epoch, as in batch.

Keeping the packets (not partial aggregates) makes a closed window's features come from
the very same engine code as batch, so stream equals batch by construction; the memory
held is the open windows' packets, projected to the columns features read. Each open
window keeps its packets as the list of slices that arrived, so adding a batch and
closing a window never copy or filter the packets of other windows.

With ``shards`` > 1 each window's packets are also split by a hash of a key column (the
node) as they arrive, so that a closed window can be featurised in node shards at once,
without a pass over all its packets first. A node's packets are all in one shard, in
arrival order. ``ended()`` lists windows whose end the newest packet has passed while
they are still open (within the lateness), so that work on them can start early.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from netsift import arrays

# A slice holding under 1/COMPACT_RATIO of the buffers it keeps alive (a small batch cut
# from a reader's full-size batch arrays) is copied, so memory follows packets held.
COMPACT_RATIO = 4
COMPACT_MIN_BYTES = 1 << 20


def shard_of(keys: pa.ChunkedArray | pa.Array, shards: int) -> np.ndarray:
    """Shard number (0 .. shards-1) of each 16-byte key (an address); nulls: shard 0."""
    array = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if len(array) == 0:
        return np.zeros(0, np.int64)
    words = np.frombuffer(array.buffers()[1], np.uint64,
                          count=2 * (array.offset + len(array)))[2 * array.offset:]
    mixed = (words[1::2] ^ words[0::2]) * np.uint64(0x9E3779B97F4A7C15)
    shard = ((mixed >> np.uint64(40)) % np.uint64(shards)).astype(np.int64)
    if array.null_count:
        shard[~arrays.valid(array)] = 0
    return shard


@dataclass
class Window:
    """One window's packets: ``shards`` holds them split by node shard (non-empty ones,
    zero-copy), ``rows`` counts them."""

    start_ns: int
    rows: int
    shards: list[pa.Table]


@dataclass
class _Open:
    rows: int = 0
    slots: list[list[pa.Table]] = field(default_factory=list)  # per shard, as arrived

    def window(self, start_ns: int) -> Window:
        return Window(start_ns, self.rows, [pa.concat_tables(s) for s in self.slots if s])


class WindowBuffer:
    """Packets of open windows; ``close()`` returns those of windows the watermark closed."""

    def __init__(self, width_ns: int, lateness_ns: int, columns: list[str] | None = None,
                 *, shard_key: str | None = None, shards: int = 1):
        if width_ns <= 0 or lateness_ns < 0:
            raise ValueError("window width must be positive and lateness non-negative")
        if shards < 1 or (shards > 1 and shard_key is None):
            raise ValueError("shards must be at least 1, and more need a shard_key")
        self.width_ns = width_ns
        self.lateness_ns = lateness_ns
        self.columns = columns
        self.shard_key, self.shards = shard_key, shards
        self.windows: dict[int, _Open] = {}  # by window index (start / width)
        self.pending_rows = 0
        self.max_ts: int | None = None
        self.closed_until: int | None = None  # every window starting before this is closed
        self.late = 0
        self.untimed = 0

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.lateness_ns

    def open_windows(self) -> int:
        return len(self.windows)

    def add(self, batch: pa.RecordBatch | pa.Table, *, replay: bool = False) -> int | None:
        """Take a batch; return the newest time among the packets kept (None: none kept).

        ``replay`` re-adds packets read before a restart: those of closed windows are
        dropped without counting them late again, and the watermark is not moved.
        """
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if self.columns is not None:
            table = table.select(self.columns)
        ts = table.column("ts")
        if ts.null_count:
            if not replay:
                self.untimed += ts.null_count
            table = table.filter(pc.is_valid(ts))
            ts = table.column("ts")
        if table.num_rows == 0:
            return None
        lo, hi = (s.as_py() for s in pc.min_max(ts).values())
        if self.closed_until is not None and lo < self.closed_until:
            on_time = arrays.values(ts) >= self.closed_until
            kept = int(np.count_nonzero(on_time))
            if not replay:
                self.late += table.num_rows - kept
            if kept == 0:
                return None
            table = table.filter(arrays.boolean(on_time))
            ts = table.column("ts")
            lo = pc.min(ts).as_py()
        if not replay:
            self.max_ts = hi if self.max_ts is None else max(self.max_ts, hi)
        self._file(table, ts, lo, hi)
        return hi

    def _file(self, table: pa.Table, ts: pa.ChunkedArray, lo: int, hi: int) -> None:
        """Append ``table`` to the windows its packets belong to (one slice per window)."""
        first, last = lo // self.width_ns, hi // self.width_ns
        if first == last:
            self._append(first, table)
            return
        index = np.floor_divide(arrays.values(ts), self.width_ns)
        order = np.argsort(index, kind="stable")  # arrival order kept within a window
        ordered = table.take(arrays.numeric(order))
        bounds = np.searchsorted(index[order], np.arange(first, last + 2))
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            if b > a:
                self._append(first + k, ordered.slice(a, b - a))

    def _append(self, window: int, table: pa.Table) -> None:
        held = self.windows.get(window)
        if held is None:
            held = self.windows[window] = _Open(slots=[[] for _ in range(self.shards)])
        held.rows += table.num_rows
        self.pending_rows += table.num_rows
        if self.shards == 1:
            size = table.get_total_buffer_size()
            if size > COMPACT_MIN_BYTES and size > COMPACT_RATIO * table.nbytes:
                table = table.take(arrays.numeric(np.arange(table.num_rows)))
            held.slots[0].append(table)
            return
        shard = shard_of(table.column(self.shard_key), self.shards)
        for i in range(self.shards):
            part = table.filter(arrays.boolean(shard == i))  # a copy: nothing else kept alive
            if part.num_rows:
                held.slots[i].append(part)

    def close(self) -> pa.Table | None:
        """Packets of the windows the watermark has closed since the last call, or None."""
        return _joined(self.close_windows())

    def close_windows(self) -> list[Window]:
        """As :meth:`close`, window by window (oldest first; empty: none closed)."""
        wm = self.watermark
        if wm is None:
            return []
        boundary = (wm // self.width_ns) * self.width_ns
        if self.closed_until is not None and boundary <= self.closed_until:
            return []
        self.closed_until = boundary
        return self._take_before(boundary)

    def flush(self) -> pa.Table | None:
        """Close every window (the input has ended)."""
        return _joined(self.flush_windows())

    def flush_windows(self) -> list[Window]:
        """As :meth:`flush`, window by window."""
        if self.max_ts is None:
            return []
        boundary = (self.max_ts // self.width_ns + 1) * self.width_ns
        self.closed_until = max(boundary, self.closed_until or boundary)
        return self._take_before(boundary)

    def ended(self, after_ns: int) -> list[int]:
        """Starts of the open windows whose end the newest packet has passed by
        ``after_ns`` or more (more packets may still come until they close)."""
        if self.max_ts is None:
            return []
        return [w * self.width_ns for w in sorted(self.windows)
                if (w + 1) * self.width_ns + after_ns <= self.max_ts]

    def snapshot(self, start_ns: int) -> Window:
        """The packets an open window holds now."""
        return self.windows[start_ns // self.width_ns].window(start_ns)

    def _take_before(self, boundary: int) -> list[Window]:
        """Remove and return the windows starting before ``boundary``."""
        closing = sorted(w for w in self.windows if w * self.width_ns < boundary)
        out = [self.windows.pop(w).window(w * self.width_ns) for w in closing]
        self.pending_rows -= sum(window.rows for window in out)
        return out

    # -- checkpointing ---------------------------------------------------------------

    def state(self) -> dict:
        return {"max_ts": self.max_ts, "closed_until": self.closed_until, "late": self.late,
                "untimed": self.untimed}

    def restore(self, state: dict, pending: pa.Table | None) -> None:
        self.max_ts = state["max_ts"]
        self.closed_until = state["closed_until"]
        self.late = state["late"]
        self.untimed = state.get("untimed", 0)
        self.windows, self.pending_rows = {}, 0
        if pending is not None and pending.num_rows:
            self.add(pending, replay=True)

    def pending_table(self) -> pa.Table | None:
        parts = [part for w in sorted(self.windows) for slot in self.windows[w].slots
                 for part in slot]
        return pa.concat_tables(parts) if parts else None


def _joined(windows: list[Window]) -> pa.Table | None:
    parts = [shard for window in windows for shard in window.shards]
    return pa.concat_tables(parts) if parts else None
