"""Event-time tumbling windows with a watermark, holding only the open windows' packets.

The watermark is the largest packet time seen minus the allowed lateness. Window
``[start, start + width)`` closes once the watermark reaches its end; its packets are then
handed out exactly once. A packet whose window has already closed is *late*: counted and
left out, never silently dropped. Windows are aligned to the epoch, as in batch.

Keeping the packets (not partial aggregates) makes a closed window's features come from
the very same engine code as batch, so stream equals batch by construction; the memory
held is the open windows' packets, projected to the columns features read.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


class WindowBuffer:
    """Packets of open windows; ``close()`` returns those of windows the watermark closed."""

    def __init__(self, width_ns: int, lateness_ns: int, columns: list[str] | None = None):
        if width_ns <= 0 or lateness_ns < 0:
            raise ValueError("window width must be positive and lateness non-negative")
        self.width_ns = width_ns
        self.lateness_ns = lateness_ns
        self.columns = columns
        self.pending: list[pa.Table] = []
        self.max_ts: int | None = None
        self.closed_until: int | None = None  # every window starting before this is closed
        self.late = 0
        self.untimed = 0

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.lateness_ns

    @property
    def pending_rows(self) -> int:
        return sum(t.num_rows for t in self.pending)

    def open_windows(self) -> int:
        if not self.pending:
            return 0
        ts = pa.chunked_array([t.column("ts") for t in self.pending])
        return len(pc.unique(pc.divide(ts, self.width_ns)))

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if self.columns is not None:
            table = table.select(self.columns)
        ts = table.column("ts")
        if ts.null_count:
            self.untimed += ts.null_count
            table = table.filter(pc.is_valid(ts))
            ts = table.column("ts")
        if table.num_rows == 0:
            return
        if self.closed_until is not None:
            on_time = pc.greater_equal(ts, self.closed_until)
            kept = pc.sum(on_time).as_py() or 0
            if kept < table.num_rows:
                self.late += table.num_rows - kept
                table = table.filter(on_time)
                if table.num_rows == 0:
                    return
                ts = table.column("ts")
        batch_max = pc.max(ts).as_py()
        self.max_ts = batch_max if self.max_ts is None else max(self.max_ts, batch_max)
        self.pending.append(table)

    def close(self) -> pa.Table | None:
        """Packets of the windows the watermark has closed since the last call, or None."""
        wm = self.watermark
        if wm is None:
            return None
        boundary = (wm // self.width_ns) * self.width_ns
        if self.closed_until is not None and boundary <= self.closed_until:
            return None
        self.closed_until = boundary
        return self._split(boundary)

    def flush(self) -> pa.Table | None:
        """Close every window (the input has ended)."""
        if self.max_ts is None:
            return None
        boundary = (self.max_ts // self.width_ns + 1) * self.width_ns
        self.closed_until = max(boundary, self.closed_until or boundary)
        return self._split(boundary)

    def _split(self, boundary: int) -> pa.Table | None:
        if not self.pending:
            return None
        table = pa.concat_tables(self.pending)
        closing = pc.less(table.column("ts"), boundary)
        out = table.filter(closing)
        rest = table.filter(pc.invert(closing))
        self.pending = [rest] if rest.num_rows else []
        return out if out.num_rows else None

    # -- checkpointing ---------------------------------------------------------------

    def state(self) -> dict:
        return {"max_ts": self.max_ts, "closed_until": self.closed_until, "late": self.late,
                "untimed": self.untimed}

    def restore(self, state: dict, pending: pa.Table | None) -> None:
        self.max_ts = state["max_ts"]
        self.closed_until = state["closed_until"]
        self.late = state["late"]
        self.untimed = state.get("untimed", 0)
        self.pending = [pending] if pending is not None and pending.num_rows else []

    def pending_table(self) -> pa.Table | None:
        return pa.concat_tables(self.pending) if self.pending else None
