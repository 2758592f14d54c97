"""Feature tables compared as Polars frames, with the tolerance of every parity test."""

from __future__ import annotations

import polars as pl


def assert_same_frames(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Same rows, no node-window twice; integers and modes exact, floats to 1e-9 relative
    (summation order follows row order, which engines, splits and arrival orders change)."""
    assert got.columns == want.columns and got.height == want.height > 0
    assert got.select("node", "window_start").is_unique().all(), "duplicate rows"
    for name in want.columns:
        if want[name].dtype.is_float():
            a, b = got[name].to_numpy(), want[name].to_numpy()
            assert ((a == b) | (abs(a - b) <= 1e-9 * abs(b)) | (a != a) & (b != b)).all(), name
        else:
            assert got[name].equals(want[name]), name
