"""The detector interface: fit on feature rows, score rows, explain scores, save and load.

Every detector scales its input the same way (:mod:`netsift.detect.scaling`) and reports
scores on one scale, so a score means the same whatever the detector or the run:

    z     = (raw - median of raw over the fit rows) / (1.4826 * MAD of raw over the fit rows)
    score = max(z, 0) / (max(z, 0) + 3)

``raw`` is the detector's own anomaly measure (higher = more anomalous). ``score`` is 0 for a
row no more anomalous than the median fit row, 0.5 at 3 robust standard deviations above
it, 0.75 at 9, and approaches 1 (never reaches it). Where the MAD is 0 (most fit rows share
one raw value) the scale is 1.2533 x the mean absolute deviation (equal to the standard
deviation for normal data), and where that is 0 too, 1e-6 x max(1, |median|).

Models are saved as one ``.npz`` file: arrays plus a JSON metadata string, read back with
``allow_pickle=False``, so loading a model file never runs code from it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from netsift import store
from netsift.detect.scaling import Scaling, as_matrix, default_categorical
from netsift.errors import UsageError

log = logging.getLogger("netsift.detect")

FORMAT = "netsift-detector"
FORMAT_VERSION = 1
HALF_SCORE_Z = 3.0
_MAD_TO_SD = 1.4826
_MEAN_ABS_TO_SD = 1.2533
_META = "__meta__"


@dataclass(frozen=True)
class Calibration:
    """Maps a detector's raw score to the common scale (module docstring)."""

    median: float
    scale: float

    @classmethod
    def fit(cls, raw: np.ndarray) -> Calibration:
        median = float(np.median(raw))
        deviation = np.abs(raw - median)
        scale = _MAD_TO_SD * float(np.median(deviation))
        if not scale > 0:
            scale = _MEAN_ABS_TO_SD * float(np.mean(deviation))
        if not scale > 0:
            scale = 1e-6 * max(1.0, abs(median))
        return cls(median, scale)

    def z(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.median) / self.scale

    def score(self, raw: np.ndarray) -> np.ndarray:
        z = np.maximum(self.z(raw), 0.0)
        return z / (z + HALF_SCORE_Z)


class Detector:
    """Base class: an unsupervised anomaly detector over per-host-window feature rows.

    ``rows`` is a Polars or pandas DataFrame, a pyarrow Table, or a numeric matrix; other
    columns (keys such as ``node`` and ``window_start``) are ignored and may be carried
    along by :meth:`score_frame`. Nulls, NaN and infinities count as missing and are
    scored as the fit median of their column. Subclasses implement ``_fit``, ``_raw``,
    ``_contributions``, ``_model_state`` and ``_restore_model``, all on scaled matrices.
    """

    name: ClassVar[str] = ""
    #: False where ``_raw`` already is on the common scale (the ensemble).
    calibrated: ClassVar[bool] = True

    def __init__(self, *, seed: int = 0, categorical: str | Sequence[str] | None = "auto"):
        self.seed = seed
        self.categorical = categorical
        self.scaling_: Scaling | None = None
        self.calibration_: Calibration | None = None

    # -- the interface -------------------------------------------------------------------

    def fit(self, rows, features: Sequence[str] | None = None) -> Detector:
        """Learn what normal looks like from ``rows``; ``features`` picks the columns."""
        matrix, names = as_matrix(rows, features)
        self.scaling_ = Scaling.fit(matrix, names, self._categorical_columns(names))
        self._fit_scaled(self.scaling_.transform(matrix))
        return self

    def score(self, rows) -> np.ndarray:
        """Anomaly score per row, float64 in [0, 1), higher = more anomalous (module doc)."""
        raw = self._raw(self._scaled(rows))
        return self.calibration_.score(raw) if self.calibrated else raw

    def raw_score(self, rows) -> np.ndarray:
        """The detector's own uncalibrated measure per row (higher = more anomalous)."""
        return self._raw(self._scaled(rows))

    def explain(self, rows, k: int = 3) -> list[list[dict[str, Any]]]:
        """Per row, the ``k`` features that contributed most to its score, largest first.

        Each entry: ``feature`` (name), ``value`` (the row's value, None if missing),
        ``typical`` (the fit median; for a categorical column its most frequent value) and
        ``weight`` (this feature's share of the row's total contribution, in [0, 1]).
        """
        matrix = self._matrix(rows)
        contributions = self._contributions(self.scaling_.transform(matrix))
        totals = contributions.sum(axis=1, keepdims=True)
        weights = np.divide(contributions, totals, out=np.zeros_like(contributions),
                            where=totals > 0)
        k = max(0, min(k, weights.shape[1]))
        # Stable sort on -weight: equal weights keep the feature order, so output is fixed.
        order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
        features, typical = self.scaling_.features, self.scaling_.typical
        return [[{"feature": features[j], "value": _number(matrix[i, j]),
                  "typical": _number(typical[j]), "weight": float(weights[i, j])}
                 for j in order[i]] for i in range(matrix.shape[0])]

    def score_frame(self, rows, k: int = 3):
        """``rows`` as a Polars DataFrame with ``score`` and ``top_features`` appended.

        Every input column (keys included) is kept. ``top_features`` is a list of structs
        as :meth:`explain` returns them.
        """
        import polars as pl

        from netsift.detect.scaling import _is_arrow, _is_pandas

        frame = pl.from_pandas(rows) if _is_pandas(rows) else \
            pl.from_arrow(rows) if _is_arrow(rows) else rows
        if not isinstance(frame, pl.DataFrame):
            raise UsageError("score_frame needs a data frame; use score() for a matrix")
        reason = pl.Struct({"feature": pl.String, "value": pl.Float64, "typical": pl.Float64,
                            "weight": pl.Float64})
        return frame.with_columns(
            pl.Series("score", self.score(frame), dtype=pl.Float64),
            pl.Series("top_features", self.explain(frame, k), dtype=pl.List(reason)))

    @property
    def features(self) -> tuple[str, ...]:
        """The feature names the model was fitted on, in order."""
        self._check_fitted()
        return self.scaling_.features

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as given (JSON-serialisable)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: _jsonable(getattr(self, name)) for name in names}

    # -- files ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model to ``path`` (one ``.npz`` file), atomically."""
        self._check_fitted()
        scaling_meta, scaling_arrays = self.scaling_.state()
        state_meta, state_arrays = self._state()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "detector": self.name,
                "params": self.get_params(), "scaling": scaling_meta, **state_meta}
        arrays = {f"scaling/{key}": value for key, value in scaling_arrays.items()}
        arrays.update({f"model/{key}": value for key, value in state_arrays.items()})
        path = Path(path)
        tmp = store.scratch_path(path)
        try:
            with open(tmp, "wb") as out:
                np.savez(out, **{_META: np.array(json.dumps(meta))}, **arrays)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot write model {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, **options) -> Detector:
        """Read a model written by :meth:`save`. ``options`` (e.g. ``device``) override.

        ``device`` is a placement, not a model option: detectors that run on the CPU only
        ignore it.
        """
        meta, arrays = _read_model(path)
        from netsift.detect import DETECTORS

        kind = DETECTORS.get(meta.get("detector"))
        if kind is None:
            raise UsageError(f"{path}: unknown detector {meta.get('detector')!r}")
        if cls is not Detector and not issubclass(kind, cls):
            raise UsageError(f"{path} holds a {meta['detector']} model, not {cls.name}")
        accepted = set(inspect.signature(kind.__init__).parameters)
        if "device" not in accepted:
            options.pop("device", None)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise UsageError(f"the {kind.name} detector has no option {', '.join(unknown)}")
        # A file with the format marker can still lack parts (damaged, or hand-made): a
        # missing key or a malformed value is the file's fault, not a bug to trace back.
        try:
            detector = kind(**{**meta["params"], **options})
            detector.scaling_ = Scaling.from_state(
                meta["scaling"], {k[len("scaling/"):]: v for k, v in arrays.items()
                                  if k.startswith("scaling/")})
            detector._restore(meta, {k[len("model/"):]: v for k, v in arrays.items()
                                     if k.startswith("model/")})
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{path} is an incomplete or damaged netsift model file "
                             f"({type(exc).__name__}: {exc})") from None
        return detector

    # -- for subclasses ------------------------------------------------------------------

    def _fit(self, scaled: np.ndarray) -> None:
        raise NotImplementedError

    def _raw(self, scaled: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _contributions(self, scaled: np.ndarray) -> np.ndarray:
        """Non-negative share of each feature in each row's raw score, shape (rows, features)."""
        raise NotImplementedError

    def _model_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        raise NotImplementedError

    def _restore_model(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------

    def _fit_scaled(self, scaled: np.ndarray) -> None:
        self._fit(scaled)
        if self.calibrated:
            self.calibration_ = Calibration.fit(self._raw(scaled))

    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta, arrays = self._model_state()
        calibration = None if self.calibration_ is None else \
            {"median": self.calibration_.median, "scale": self.calibration_.scale}
        return {"calibration": calibration, "model": meta}, arrays

    def _restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if meta.get("calibration") is not None:
            self.calibration_ = Calibration(**meta["calibration"])
        self._restore_model(meta["model"], arrays)

    def _categorical_columns(self, features: Sequence[str]) -> tuple[str, ...]:
        if self.categorical == "auto":
            return default_categorical(features)
        if isinstance(self.categorical, str):
            raise UsageError(f"categorical must be 'auto', None or a list of feature names, "
                             f"not {self.categorical!r}")
        return tuple(self.categorical or ())

    def _check_fitted(self) -> None:
        if self.scaling_ is None:
            raise UsageError(f"the {self.name} detector is not fitted: call fit() or load()")

    def _matrix(self, rows) -> np.ndarray:
        self._check_fitted()
        features = self.scaling_.features
        is_frame = not isinstance(rows, np.ndarray | list | tuple)
        matrix, _ = as_matrix(rows, features if is_frame else None)
        if matrix.shape[1] != len(features):
            raise UsageError(f"rows have {matrix.shape[1]} columns, the model was fitted on "
                             f"{len(features)} features")
        return matrix

    def _scaled(self, rows) -> np.ndarray:
        return self.scaling_.transform(self._matrix(rows))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def _read_model(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("not an .npz archive")
        with data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise UsageError(f"model file not found: {path}") from None
    # Truncated or damaged archives fail in zipfile and zlib, an empty file with EOFError.
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UsageError(f"{path} is not a netsift model file: {exc}") from None
    try:
        meta = json.loads(str(arrays.pop(_META)))
        if meta.get("format") != FORMAT:
            raise ValueError("format marker missing")
    except (KeyError, ValueError, AttributeError):
        raise UsageError(f"{path} is not a netsift model file") from None
    if meta.get("version") != FORMAT_VERSION:
        raise UsageError(f"{path}: model file version {meta.get('version')} is not supported "
                         f"(this netsift reads version {FORMAT_VERSION}); fit the model again")
    return meta, arrays


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _jsonable(value):
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
