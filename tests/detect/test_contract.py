"""The contract every detector in ``DETECTORS`` meets; a new detector is checked by entry.

Checks the interface (:mod:`netsift.detect.base`): the score scale, detection quality on
planted anomalies, explanations, model files, missing values, key columns, determinism.
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from planted_rows import FEATURES, NUMERIC, ONE_FEATURE_SHIFT, Planted, make_rows, typical_row
from sklearn.metrics import roc_auc_score

from netsift.detect import DETECTORS, Detector
from netsift.errors import UsageError

# Options beyond the defaults, where a detector needs them for the contract to hold: the
# autoencoder is deterministic on the CPU only, so it is pinned there.
OPTIONS: dict[str, dict] = {"autoencoder": {"device": "cpu"}}
SEED = 3


def make(name: str, seed: int = SEED) -> Detector:
    if name == "autoencoder":
        pytest.importorskip("torch")
    return DETECTORS[name](seed=seed, **OPTIONS.get(name, {}))


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def fitted(name, planted: Planted) -> Detector:
    return make(name).fit(planted.rows)


def one_row(values: dict[str, float | None]) -> pl.DataFrame:
    return pl.DataFrame([values], schema={feature: pl.Float64 for feature in FEATURES})


def test_fit_returns_the_detector(name, planted):
    detector = make(name)
    assert detector.fit(planted.rows.head(200)) is detector
    assert detector.features == FEATURES


def test_scores_are_float64_in_unit_interval(fitted, planted):
    scores = fitted.score(planted.rows)
    assert scores.dtype == np.float64
    assert scores.shape == (planted.rows.height,)
    assert np.all((scores >= 0) & (scores < 1))


def test_obvious_outliers_score_above_inliers(fitted, planted):
    typical = typical_row(planted)
    inliers = fitted.score(planted.rows.filter(~planted.is_anomaly))
    far_everywhere = pl.concat([one_row({**typical, **{name: typical[name] * math.exp(shift)
                                                       for name in NUMERIC}})
                                for shift in (4, 6)])
    far_in_one = pl.concat([one_row({**typical, name: typical[name] * math.exp(8)})
                            for name in NUMERIC])
    assert fitted.score(one_row(typical))[0] < 0.5
    assert np.all(fitted.score(far_everywhere) > max(0.5, inliers.max()))
    # One feature of seven: isolation forest splits on it only a seventh of the time.
    assert np.all(fitted.score(far_in_one) > max(np.median(inliers),
                                                 fitted.score(one_row(typical))[0]))


def test_finds_planted_anomalies(fitted, planted):
    auc = roc_auc_score(planted.is_anomaly, fitted.score(planted.rows))
    assert auc >= 0.95, f"ROC-AUC {auc:.3f}"


def test_explain_entries(fitted, planted):
    rows = planted.rows.head(50)
    explained = fitted.explain(rows, k=3)
    assert len(explained) == rows.height
    for entries in explained:
        assert len(entries) == 3
        assert all(entry.keys() == {"feature", "value", "typical", "weight"}
                   for entry in entries)
        weights = [entry["weight"] for entry in entries]
        assert all(0 <= weight <= 1 for weight in weights)
        assert sum(weights) <= 1 + 1e-12
        assert weights == sorted(weights, reverse=True)
        assert {entry["feature"] for entry in entries} <= set(FEATURES)


@pytest.mark.parametrize("deviating", NUMERIC)
def test_explain_ranks_the_deviating_feature_first(fitted, planted, deviating):
    typical = typical_row(planted)
    row = one_row({**typical, deviating: typical[deviating] * math.exp(ONE_FEATURE_SHIFT)})
    first = fitted.explain(row, k=1)[0][0]
    assert first["feature"] == deviating
    assert first["value"] == pytest.approx(typical[deviating] * math.exp(ONE_FEATURE_SHIFT))


def test_save_load_round_trip(fitted, planted, tmp_path):
    path = fitted.save(tmp_path / "model.npz")
    loaded = Detector.load(path)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.features == fitted.features
    np.testing.assert_allclose(loaded.score(planted.rows), fitted.score(planted.rows),
                               rtol=0, atol=1e-12)
    before, after = fitted.explain(planted.rows, k=3), loaded.explain(planted.rows, k=3)
    assert [[(e["feature"], e["value"], e["typical"]) for e in row] for row in after] == \
        [[(e["feature"], e["value"], e["typical"]) for e in row] for row in before]
    np.testing.assert_allclose([[e["weight"] for e in row] for row in after],
                               [[e["weight"] for e in row] for row in before],
                               rtol=0, atol=1e-12)
    assert type(fitted).load(path).get_params() == fitted.get_params()


def _corrupt_files(model: bytes, tmp_path) -> dict[str, object]:
    files = {
        "empty": b"",
        "text": b"not a model\n",
        "truncated": model[: len(model) // 2],
        "bit flip": model[:300] + bytes([model[300] ^ 0xFF]) + model[301:],
    }
    paths = {}
    for label, content in files.items():
        paths[label] = tmp_path / f"{label.replace(' ', '_')}.npz"
        paths[label].write_bytes(content)
    paths["foreign npz"] = tmp_path / "foreign.npz"
    np.savez(paths["foreign npz"], weights=np.arange(3))
    paths["npy"] = tmp_path / "array.npy"
    np.save(paths["npy"], np.arange(3))
    paths["marker only"] = tmp_path / "marker.npz"
    np.savez(paths["marker only"], __meta__=np.array(json.dumps(
        {"format": "netsift-detector", "version": 1, "detector": "iforest", "params": {}})))
    paths["missing"] = tmp_path / "missing.npz"
    paths["directory"] = tmp_path
    return paths


def test_corrupt_or_foreign_files_raise_usage_error(fitted, tmp_path):
    model = fitted.save(tmp_path / "model.npz").read_bytes()
    escaped = []
    for label, path in _corrupt_files(model, tmp_path).items():
        try:
            Detector.load(path)
        except UsageError:
            continue
        except Exception as exc:  # any other error is a traceback for the user: report it
            escaped.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            escaped.append(f"{label}: loaded")
    assert not escaped


def test_missing_and_non_finite_values_score(fitted, planted):
    typical = typical_row(planted)
    rows = pl.concat([
        one_row({name: None for name in FEATURES}),
        one_row({**typical, "packets": None, "dport_mode": None}),
        one_row({**typical, "bytes": float("nan")}),
        one_row({**typical, "bytes": float("inf"), "length_mean": float("-inf")}),
    ])
    scores = fitted.score(rows)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores < 1))
    # Missing counts as the fit median: the all-null row is as typical as the median row.
    assert scores[0] == pytest.approx(fitted.score(one_row(typical))[0], abs=0.05)
    matrix = rows.to_numpy()
    np.testing.assert_array_equal(fitted.score(matrix), scores)
    assert len(fitted.explain(rows)) == rows.height


def test_key_columns_are_not_features(name, fitted, planted):
    assert "node" not in fitted.features and "window_start" not in fitted.features
    without_keys = make(name).fit(planted.rows.drop("node", "window_start"))
    np.testing.assert_array_equal(without_keys.score(planted.rows), fitted.score(planted.rows))
    shifted = planted.rows.with_columns(pl.col("window_start") + 86_400,
                                        pl.lit("192.0.2.1").alias("node"))
    np.testing.assert_array_equal(fitted.score(shifted), fitted.score(planted.rows))


def test_deterministic_given_the_seed(name, fitted, planted):
    again = make(name).fit(planted.rows)
    np.testing.assert_array_equal(again.score(planted.rows), fitted.score(planted.rows))


def test_other_data_same_contract(name):
    """The quality bar holds on a second draw too, not only on the tuned one."""
    other = make_rows(n_rows=400, seed=11)
    detector = make(name).fit(other.rows)
    assert roc_auc_score(other.is_anomaly, detector.score(other.rows)) >= 0.95
