"""A synthetic feature table with planted anomalies, for the detector tests.

Real captures carry no ground truth, so the rows are made: six positive, heavy-tailed
features driven by two hidden factors (counts and bytes of one host rise and fall
together), plus a port mode, keyed by ``node`` and ``window_start`` like a real feature
table. Planted anomalies either multiply one feature by e^6 or every feature by e^3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

NUMERIC = ("packets", "bytes", "dst_n_unique", "dport_n_unique", "length_mean",
           "interarrival_mean")
FEATURES = (*NUMERIC, "dport_mode")
ONE_FEATURE_SHIFT = 6.0  # in log units: e^6 ~ 400 times the value
ALL_FEATURES_SHIFT = 3.0


@dataclass(frozen=True)
class Planted:
    """Rows (a Polars frame with keys), whether each row is planted, and the generator."""

    rows: pl.DataFrame
    is_anomaly: np.ndarray
    loadings: np.ndarray
    base: np.ndarray


def make_rows(n_rows: int = 600, anomaly_fraction: float = 0.05, seed: int = 7) -> Planted:
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.0, 5.0, len(NUMERIC))
    loadings = rng.normal(scale=0.8, size=(2, len(NUMERIC)))
    logs = base + rng.normal(size=(n_rows, 2)) @ loadings \
        + rng.normal(scale=0.25, size=(n_rows, len(NUMERIC)))
    is_anomaly = np.zeros(n_rows, dtype=bool)
    planted = rng.choice(n_rows, int(round(anomaly_fraction * n_rows)), replace=False)
    is_anomaly[planted] = True
    for number, row in enumerate(planted):
        if number % 2:
            logs[row] += ALL_FEATURES_SHIFT
        else:
            logs[row, rng.integers(len(NUMERIC))] += ONE_FEATURE_SHIFT
    frame = pl.DataFrame({
        "node": [f"10.0.{i // 250}.{i % 250}" for i in range(n_rows)],
        # Numeric on purpose: a key must be left out by name, not by type.
        "window_start": pl.Series(1_700_000_000 + 60 * np.arange(n_rows), dtype=pl.Int64),
        **{name: np.exp(logs[:, j]) for j, name in enumerate(NUMERIC)},
        "dport_mode": rng.choice(np.array([443, 80]), n_rows, p=[0.6, 0.4]),
    })
    return Planted(frame, is_anomaly, loadings, base)


def typical_row(planted: Planted) -> dict[str, float]:
    """One row at the centre of the inliers: every factor 0, the common port."""
    return {**{name: float(np.exp(planted.base[j])) for j, name in enumerate(NUMERIC)},
            "dport_mode": 443.0}
