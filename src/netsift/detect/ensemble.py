"""An ensemble: several detectors fitted on the same scaled rows, their scores combined.

Each member's score is already on the common scale (:mod:`netsift.detect.base`), so the
ensemble's score is their mean (``combine="mean"``, the default) or maximum
(``combine="max"``), in [0, 1) like any detector's: a mean of 0.5 says the members agree,
on average, that the row lies 3 robust standard deviations out. Averaging detectors with
different inductive biases (density-based clustering, random isolation, reconstruction)
cancels much of each one's false positives (Aggarwal & Sathe, "Theoretical Foundations
and Algorithms for Outlier Ensembles", SIGKDD Explorations 17(1), 2015).

>>> import numpy as np
>>> from netsift.detect import EnsembleDetector
>>> rng = np.random.default_rng(0)
>>> detector = EnsembleDetector(members=("iforest", "meanshift")).fit(rng.normal(size=(200, 3)))
>>> scores = detector.score(np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]))
>>> bool(scores[1] > 0.5 > scores[0])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netsift.detect.base import Detector
from netsift.errors import UsageError

COMBINERS = ("mean", "max")


class EnsembleDetector(Detector):
    """Members by registry name, fitted on the same scaling; scores combined per row.

    ``explain`` weighs each member's per-feature shares by that member's score, so the
    features that drove the most confident members come first.
    """

    name = "ensemble"
    calibrated = False  # the members' scores are calibrated already

    def __init__(self, *, members: Sequence[str] = ("iforest", "meanshift"),
                 combine: str = "mean", seed: int = 0,
                 categorical: str | Sequence[str] | None = "auto"):
        super().__init__(seed=seed, categorical=categorical)
        from netsift.detect import DETECTORS

        members = tuple(members)
        unknown = [m for m in members if m not in DETECTORS or m == self.name]
        if not members or unknown:
            raise UsageError(f"ensemble members must be detectors other than ensemble: "
                             f"{', '.join(unknown) or 'none given'}")
        if combine not in COMBINERS:
            raise UsageError(f"combine must be {' or '.join(COMBINERS)}, not {combine!r}")
        self.members = members
        self.combine = combine
        self.members_: list[Detector] = []

    def _new_member(self, name: str) -> Detector:
        from netsift.detect import DETECTORS

        member = DETECTORS[name](seed=self.seed, categorical=self.categorical)
        member.scaling_ = self.scaling_
        return member

    def _fit(self, scaled: np.ndarray) -> None:
        self.members_ = []
        for name in self.members:
            member = self._new_member(name)
            member._fit_scaled(scaled)
            self.members_.append(member)

    def _member_scores(self, scaled: np.ndarray) -> np.ndarray:
        return np.stack([m.calibration_.score(m._raw(scaled)) if m.calibrated else m._raw(scaled)
                         for m in self.members_], axis=1)

    def _raw(self, scaled: np.ndarray) -> np.ndarray:
        scores = self._member_scores(scaled)
        return scores.mean(axis=1) if self.combine == "mean" else scores.max(axis=1)

    def member_scores(self, rows) -> dict[str, np.ndarray]:
        """Each member's score per row, by member name."""
        scores = self._member_scores(self._scaled(rows))
        return {name: scores[:, i] for i, name in enumerate(self.members)}

    def _contributions(self, scaled: np.ndarray) -> np.ndarray:
        scores = self._member_scores(scaled)
        total = np.zeros(scaled.shape)
        for i, member in enumerate(self.members_):
            part = member._contributions(scaled)
            sums = part.sum(axis=1, keepdims=True)
            shares = np.divide(part, sums, out=np.zeros_like(part), where=sums > 0)
            total += shares * scores[:, i:i + 1]
        return total

    def _model_state(self):
        meta, arrays = [], {}
        for i, member in enumerate(self.members_):
            member_meta, member_arrays = member._state()
            meta.append({"name": member.name, "params": member.get_params(), **member_meta})
            arrays.update({f"m{i}/{key}": value for key, value in member_arrays.items()})
        return {"members": meta}, arrays

    def _restore_model(self, meta, arrays):
        from netsift.detect import DETECTORS

        self.members_ = []
        for i, entry in enumerate(meta["members"]):
            member = DETECTORS[entry["name"]](**entry["params"])
            member.scaling_ = self.scaling_
            prefix = f"m{i}/"
            member._restore(entry, {k[len(prefix):]: v for k, v in arrays.items()
                                    if k.startswith(prefix)})
            self.members_.append(member)
