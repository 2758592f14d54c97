"""Mean shift clustering: anomalies are members of small clusters or far from any large one.

After Niranjana, Anil Kumar, Sheen, "Darknet Traffic Analysis and Classification Using
Numerical AGM and Mean Shift Clustering Algorithm", SN Computer Science 1:16 (2019),
doi:10.1007/s42979-019-0016-x: the scaled per-source aggregate-and-mode (NAGM) features
are clustered by mean shift with a bandwidth estimated from the data (scikit-learn's
``estimate_bandwidth``); ordinary behaviour gathers in a few large clusters, and the
sources that form small clusters are the unusual ones.

>>> import numpy as np
>>> from netsift.detect import MeanShiftDetector
>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=(200, 3))
>>> detector = MeanShiftDetector().fit(normal)
>>> scores = detector.score(np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]))
>>> bool(scores[1] > 0.5 > scores[0])
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from netsift.detect.base import Detector


class MeanShiftDetector(Detector):
    """Mean shift over the scaled features.

    A cluster is *large* if it holds at least ``min_cluster_fraction`` of the fit rows (the
    largest cluster always is). ``raw`` is the distance from a row to the nearest large
    cluster centre, in bandwidths: a member of a small cluster is far from every large
    centre, and so is a row on the fringe of a large cluster. ``explain`` splits that
    squared distance by feature.

    ``bandwidth``: fixed kernel width in scaled units; None estimates it from
    ``bandwidth_rows`` fit rows (sampled with ``seed``) at ``quantile`` (scikit-learn's
    ``estimate_bandwidth``), and falls back to 1 when that gives 0 (mostly identical rows).
    """

    name = "meanshift"

    def __init__(self, *, bandwidth: float | None = None, quantile: float = 0.3,
                 bandwidth_rows: int = 1000, min_cluster_fraction: float = 0.05,
                 max_iter: int = 300, seed: int = 0,
                 categorical: str | Sequence[str] | None = "auto"):
        super().__init__(seed=seed, categorical=categorical)
        self.bandwidth = bandwidth
        self.quantile = quantile
        self.bandwidth_rows = bandwidth_rows
        self.min_cluster_fraction = min_cluster_fraction
        self.max_iter = max_iter

    def _fit(self, scaled: np.ndarray) -> None:
        from sklearn.cluster import MeanShift, estimate_bandwidth

        n_rows = scaled.shape[0]
        bandwidth = self.bandwidth
        if bandwidth is None:
            bandwidth = float(estimate_bandwidth(
                scaled, quantile=self.quantile, random_state=self.seed,
                n_samples=min(n_rows, self.bandwidth_rows)))
            if not bandwidth > 0:
                bandwidth = 1.0
        with warnings.catch_warnings():
            # Binning failing for a tiny bandwidth is handled: every row becomes a seed.
            warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
            clusters = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=True,
                                 max_iter=self.max_iter).fit(scaled)
        sizes = np.bincount(clusters.labels_, minlength=len(clusters.cluster_centers_))
        large = sizes >= max(1, math.ceil(self.min_cluster_fraction * n_rows))
        large[np.argmax(sizes)] = True
        self._centres = clusters.cluster_centers_.astype(np.float64)
        self._sizes = sizes.astype(np.int64)
        self._large = large
        self._bandwidth = bandwidth

    def _nearest_large(self, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centres = self._centres[self._large]
        distances = np.sqrt(((scaled[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
        nearest = np.argmin(distances, axis=1)
        return centres[nearest], distances[np.arange(scaled.shape[0]), nearest]

    def _raw(self, scaled: np.ndarray) -> np.ndarray:
        return self._nearest_large(scaled)[1] / self._bandwidth

    def _contributions(self, scaled: np.ndarray) -> np.ndarray:
        return (scaled - self._nearest_large(scaled)[0]) ** 2

    @property
    def cluster_sizes(self) -> np.ndarray:
        """Fit rows per cluster, in the order of the cluster centres."""
        self._check_fitted()
        return self._sizes

    def _model_state(self):
        return ({"bandwidth": self._bandwidth},
                {"centres": self._centres, "sizes": self._sizes, "large": self._large})

    def _restore_model(self, meta, arrays):
        self._bandwidth = float(meta["bandwidth"])
        self._centres, self._sizes = arrays["centres"], arrays["sizes"]
        self._large = arrays["large"].astype(bool)
