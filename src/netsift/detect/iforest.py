"""Isolation forest: anomalies are the rows that random axis-parallel splits isolate early.

Liu, Ting, Zhou, "Isolation Forest", ICDM 2008. The forest is grown by scikit-learn's
``IsolationForest``; its trees are then kept as plain arrays and walked here, so a saved
model is a few arrays (no pickle) and scores the same before and after a round trip.

>>> import numpy as np
>>> from netsift.detect import IsolationForestDetector
>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=(200, 3))
>>> detector = IsolationForestDetector(n_estimators=50, seed=1).fit(normal)
>>> scores = detector.score(np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]))
>>> bool(scores[1] > 0.5 > scores[0])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numba as nb
import numpy as np

from netsift.detect.base import Detector

_BLOCK = 256  # rows per parallel task


@nb.njit(parallel=True, nogil=True, cache=True)
def _walk_trees(values, roots, left, right, feature, threshold, samples, leaf_depth,
                want_credit, credit):
    """Per row: summed path length over all trees (+ the unbuilt subtree's expected depth
    at the leaf); with ``want_credit``, ``log2(samples at node / samples in the branch
    taken)`` added to ``credit[row, split feature]`` at every split on the path."""
    n_rows = values.shape[0]
    depths = np.zeros(n_rows)
    # Tree-major within a block of rows: one tree's arrays stay in cache for the block.
    for block in nb.prange((n_rows + _BLOCK - 1) // _BLOCK):
        first, last = block * _BLOCK, min(n_rows, (block + 1) * _BLOCK)
        for t in range(roots.shape[0]):
            for row in range(first, last):
                node = roots[t]
                depth = 0.0
                while left[node] >= 0:
                    split = feature[node]
                    child = left[node] if values[row, split] <= threshold[node] \
                        else right[node]
                    if want_credit:
                        credit[row, split] += np.log2(samples[node] / samples[child])
                    depth += 1.0
                    node = child
                depths[row] += depth + leaf_depth[node]
    return depths


def average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary tree of ``n`` nodes."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class IsolationForestDetector(Detector):
    """Isolation forest over the scaled features.

    ``raw`` is the paper's anomaly score ``2 ** (-E[h(x)] / c(max_samples))`` in (0, 1]
    (scikit-learn's ``-score_samples``). ``explain`` credits each split on a row's path with
    ``log2(samples at the node / samples in the branch the row took)``: the features that
    cut the row off from most of the fit rows early get the credit.
    """

    name = "iforest"

    def __init__(self, *, n_estimators: int = 500, max_samples: int | str = "auto",
                 seed: int = 0, categorical: str | Sequence[str] | None = "auto"):
        super().__init__(seed=seed, categorical=categorical)
        self.n_estimators = n_estimators
        self.max_samples = max_samples

    def _fit(self, scaled: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                 max_features=1.0, random_state=self.seed).fit(scaled)
        left, right, feature, threshold, samples, roots = [], [], [], [], [], []
        offset = 0
        for estimator in forest.estimators_:
            tree = estimator.tree_
            is_leaf = tree.children_left < 0
            roots.append(offset)
            left.append(np.where(is_leaf, -1, tree.children_left + offset))
            right.append(np.where(is_leaf, -1, tree.children_right + offset))
            feature.append(np.where(is_leaf, 0, tree.feature))
            threshold.append(tree.threshold)
            samples.append(tree.n_node_samples)
            offset += tree.node_count
        self._left = np.concatenate(left).astype(np.int64)
        self._right = np.concatenate(right).astype(np.int64)
        self._feature = np.concatenate(feature).astype(np.int64)
        self._threshold = np.concatenate(threshold).astype(np.float64)
        self._samples = np.concatenate(samples).astype(np.int64)
        self._roots = np.asarray(roots, dtype=np.int64)
        self._max_samples = int(forest.max_samples_)

    def _walk(self, scaled: np.ndarray, credit: np.ndarray | None = None) -> np.ndarray:
        """Sum over trees of each row's path length; adds split credits into ``credit``."""
        # The trees were grown on float32 copies of the rows: compare the same values.
        values = np.ascontiguousarray(scaled.astype(np.float32).astype(np.float64))
        leaf_depth = average_path_length(self._samples)
        out = credit if credit is not None else np.zeros((0, 0))
        return _walk_trees(values, self._roots, self._left, self._right, self._feature,
                           self._threshold, self._samples.astype(np.float64), leaf_depth,
                           credit is not None, out)

    def _raw(self, scaled: np.ndarray) -> np.ndarray:
        denominator = self._roots.size * average_path_length(np.array([self._max_samples]))[0]
        if denominator == 0:  # one fit row: every path is empty
            return np.ones(scaled.shape[0])
        return 2.0 ** (-self._walk(scaled) / denominator)

    def _contributions(self, scaled: np.ndarray) -> np.ndarray:
        credit = np.zeros(scaled.shape)
        self._walk(scaled, credit)
        return credit

    _ARRAYS = ("left", "right", "feature", "threshold", "samples", "roots")

    def _model_state(self):
        return ({"max_samples": self._max_samples},
                {name: getattr(self, f"_{name}") for name in self._ARRAYS})

    def _restore_model(self, meta, arrays):
        for name in self._ARRAYS:
            setattr(self, f"_{name}", arrays[name])
        self._max_samples = int(meta["max_samples"])
