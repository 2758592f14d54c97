"""Feature rows to a numeric matrix, and the fixed, robust scaling every detector shares.

Steps, learned on the fit rows and applied unchanged to any later rows:

1. **Non-finite -> null.** NaN, +-inf and nulls all count as missing.
2. **Categorical columns -> rarity.** A categorical column (by default every column whose
   name ends in ``_mode``: a port or protocol number is a label, not a magnitude) becomes
   ``log((n + 1) / (count + 1))`` where ``count`` is how many of the ``n`` fit rows had
   that value: 0 for a value every fit row had, ``log(n + 1)`` for one never seen.
3. **Other columns -> signed log1p**, ``sign(x) * log(1 + |x|)``: counts, bytes and rates
   are heavy-tailed, shares in [0, 1] stay almost linear.
4. **Robust scaling.** ``(t - median) / scale`` with ``scale`` the interquartile range /
   1.349 (the standard deviation, for normal data); where that is 0 (most fit rows equal)
   the standard deviation instead, and 1 for a constant column.
5. **Nulls -> 0**, i.e. the fit median: a missing value never makes a row unusual.
6. **Clip** to +-:data:`CLIP`, so one degenerate column cannot swamp the rest.

Everything is deterministic: no sampling, no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from netsift.errors import UsageError

CLIP = 50.0
_IQR_TO_SD = 1.349  # interquartile range of a standard normal
# Key columns of a feature table (netsift.features.spec.KEY_COLUMNS): never features.
_KEY_COLUMNS = ("node", "window_start")


def default_categorical(features: Sequence[str]) -> tuple[str, ...]:
    """The feature names treated as categorical unless told otherwise: ``*_mode``."""
    return tuple(name for name in features if name.endswith("_mode"))


def as_matrix(rows, features: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``rows`` as a float64 matrix (nulls as NaN) and the feature names, in column order.

    ``rows``: a Polars or pandas DataFrame, a pyarrow Table, or anything ``numpy.asarray``
    makes 2-D. For a frame, ``features`` defaults to every numeric column except the keys
    ``node`` and ``window_start``; for a matrix, to ``x0``, ``x1``, ...
    """
    import polars as pl

    if _is_pandas(rows) or _is_arrow(rows):
        rows = pl.from_pandas(rows) if _is_pandas(rows) else pl.from_arrow(rows)
    if isinstance(rows, pl.DataFrame):
        if features is None:
            features = [name for name, dtype in rows.schema.items()
                        if (dtype.is_numeric() or dtype == pl.Boolean)
                        and name not in _KEY_COLUMNS]
        features = tuple(features)
        missing = [name for name in features if name not in rows.columns]
        if missing:
            raise UsageError(f"feature columns missing from the rows: {', '.join(missing)}")
        try:
            matrix = rows.select(pl.col(name).cast(pl.Float64) for name in features) \
                .to_numpy(allow_copy=True)
        except pl.exceptions.PolarsError as exc:
            raise UsageError(f"feature columns must be numeric: {exc}") from None
        return np.array(matrix, dtype=np.float64, copy=True).reshape(rows.height, len(features)), \
            features
    try:
        matrix = np.array(rows, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"rows must be a numeric matrix or a data frame: {exc}") from None
    if matrix.ndim != 2:
        raise UsageError(f"rows must be 2-D (rows x features), got shape {matrix.shape}")
    if features is None:
        features = tuple(f"x{i}" for i in range(matrix.shape[1]))
    features = tuple(features)
    if len(features) != matrix.shape[1]:
        raise UsageError(f"{matrix.shape[1]} columns but {len(features)} feature names")
    return matrix, features


def _is_pandas(rows) -> bool:
    return type(rows).__module__.startswith("pandas") and hasattr(rows, "columns")


def _is_arrow(rows) -> bool:
    return type(rows).__module__.startswith("pyarrow") and hasattr(rows, "schema")


def _signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass
class Scaling:
    """The learned scaling of one feature set (see the module docstring for the steps).

    ``typical`` holds, in the features' own units, the fit median (categorical: the most
    frequent value, ties to the smallest); NaN where every fit value was null.
    """

    features: tuple[str, ...]
    categorical: np.ndarray      # bool per feature
    center: np.ndarray           # median of the transformed fit values
    scale: np.ndarray
    typical: np.ndarray
    category_values: np.ndarray  # sorted values of all categorical columns, concatenated
    category_rarity: np.ndarray
    category_offsets: np.ndarray  # slice of category_values per feature (non-categorical: empty)
    n_fit_rows: int

    @classmethod
    def fit(cls, matrix: np.ndarray, features: Sequence[str],
            categorical: Sequence[str] = ()) -> Scaling:
        features = tuple(features)
        unknown = sorted(set(categorical) - set(features))
        if unknown:
            raise UsageError(f"categorical columns that are not features: {', '.join(unknown)}")
        if matrix.shape[0] == 0:
            raise UsageError("cannot fit a detector on zero rows")
        matrix = np.where(np.isfinite(matrix), matrix, np.nan)
        is_categorical = np.array([name in set(categorical) for name in features], dtype=bool)
        n_rows, n_features = matrix.shape
        values, rarity, offsets = [], [], [0]
        typical = np.full(n_features, np.nan)
        for j in range(n_features):
            column = matrix[:, j]
            present = column[~np.isnan(column)]
            if is_categorical[j] and present.size:
                levels, counts = np.unique(present, return_counts=True)
                values.append(levels)
                rarity.append(np.log((n_rows + 1) / (counts + 1)))
                typical[j] = levels[np.argmax(counts)]  # argmax: first, i.e. smallest, of ties
            elif present.size:
                typical[j] = np.median(present)
            offsets.append(offsets[-1] + (values[-1].size if is_categorical[j] and present.size
                                          else 0))
        scaling = cls(features, is_categorical, np.zeros(n_features), np.ones(n_features),
                      typical, _concat(values), _concat(rarity),
                      np.asarray(offsets, dtype=np.int64), n_rows)
        transformed = scaling._transform_units(matrix)
        for j in range(n_features):
            present = transformed[:, j][~np.isnan(transformed[:, j])]
            if not present.size:
                continue
            q1, median, q3 = np.percentile(present, [25, 50, 75])
            scale = (q3 - q1) / _IQR_TO_SD
            if not scale > 0:
                scale = float(np.std(present))
            scaling.center[j] = median
            scaling.scale[j] = scale if scale > 0 else 1.0
        return scaling

    def _transform_units(self, matrix: np.ndarray) -> np.ndarray:
        out = _signed_log1p(matrix)
        for j in np.flatnonzero(self.categorical):
            lo, hi = self.category_offsets[j], self.category_offsets[j + 1]
            column = matrix[:, j]
            levels, rarity = self.category_values[lo:hi], self.category_rarity[lo:hi]
            unseen = np.log(self.n_fit_rows + 1.0)
            if levels.size:
                at = np.clip(np.searchsorted(levels, column), 0, levels.size - 1)
                out[:, j] = np.where(levels[at] == column, rarity[at], unseen)
            else:
                out[:, j] = unseen
            out[np.isnan(column), j] = np.nan
        return out

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """Scaled matrix (float64, nulls -> 0, clipped to +-CLIP) for the fitted features."""
        if matrix.shape[1] != len(self.features):
            raise UsageError(f"rows have {matrix.shape[1]} feature columns, the model "
                             f"{len(self.features)}")
        matrix = np.where(np.isfinite(matrix), matrix, np.nan)
        scaled = (self._transform_units(matrix) - self.center) / self.scale
        return np.clip(np.nan_to_num(scaled, nan=0.0), -CLIP, CLIP)

    _ARRAYS = ("categorical", "center", "scale", "typical", "category_values",
               "category_rarity", "category_offsets")

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON metadata and arrays that :meth:`from_state` restores exactly."""
        return ({"features": list(self.features), "n_fit_rows": self.n_fit_rows},
                {name: getattr(self, name) for name in self._ARRAYS})

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> Scaling:
        return cls(features=tuple(meta["features"]), n_fit_rows=int(meta["n_fit_rows"]),
                   **{name: arrays[name] for name in cls._ARRAYS})


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
