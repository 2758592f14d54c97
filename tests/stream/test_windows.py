"""Event-time windows: closing by watermark, late packets counted, restore from state."""

from __future__ import annotations

import pyarrow as pa
import pytest

from netsift.stream.windows import WindowBuffer

S = 1_000_000_000


def packets(*seconds: float) -> pa.Table:
    return pa.table({"ts": pa.array([int(s * S) for s in seconds], pa.int64()),
                     "wire_len": pa.array([60] * len(seconds), pa.uint32())})


def ts_of(table: pa.Table | None) -> list[float]:
    return [] if table is None else [t / S for t in table.column("ts").to_pylist()]


def test_window_closes_only_when_watermark_passes_its_end():
    buf = WindowBuffer(10 * S, 2 * S)
    buf.add(packets(1, 5, 11))
    assert buf.close() is None  # watermark 9 < 10
    buf.add(packets(12))
    assert ts_of(buf.close()) == [1, 5]  # watermark 10 reaches the end of [0, 10)
    assert buf.close() is None
    assert ts_of(buf.flush()) == [11, 12]


def test_late_packets_are_counted_not_kept():
    buf = WindowBuffer(10 * S, 0)
    buf.add(packets(3, 15))
    assert ts_of(buf.close()) == [3]
    buf.add(packets(4, 9.999, 10, 16))
    assert buf.late == 2
    assert ts_of(buf.flush()) == [15, 10, 16]


def test_out_of_order_within_lateness_is_not_late():
    buf = WindowBuffer(10 * S, 5 * S)
    buf.add(packets(12, 8, 14, 9))
    assert buf.close() is None  # watermark 9
    buf.add(packets(15))
    assert sorted(ts_of(buf.close())) == [8, 9]
    assert buf.late == 0


def test_untimed_rows_are_counted():
    buf = WindowBuffer(10 * S, 0)
    buf.add(pa.table({"ts": pa.array([None, 1 * S], pa.int64())}))
    assert buf.untimed == 1 and ts_of(buf.flush()) == [1]


def test_state_round_trip_continues_identically():
    a = WindowBuffer(10 * S, 1 * S)
    a.add(packets(1, 2, 12))
    a.close()
    b = WindowBuffer(10 * S, 1 * S)
    b.restore(a.state(), a.pending_table())
    for buf in (a, b):
        buf.add(packets(25, 3))
    assert ts_of(a.close()) == ts_of(b.close())
    assert a.late == b.late == 1


def test_bad_width_rejected():
    with pytest.raises(ValueError):
        WindowBuffer(0, 0)
