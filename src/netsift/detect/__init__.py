"""Anomaly detectors over per-host-window feature rows; one interface (:class:`Detector`).

>>> from netsift.detect import DETECTORS, Detector               # doctest: +SKIP
>>> model = DETECTORS["iforest"]().fit(features)
>>> model.save("model.npz"); Detector.load("model.npz").score(features)

Scores share one scale (:mod:`netsift.detect.base`): 0 typical, 0.5 at 3 robust standard
deviations above the fit median, approaching 1.
"""

from netsift.detect.base import Calibration, Detector
from netsift.detect.iforest import IsolationForestDetector
from netsift.detect.meanshift import MeanShiftDetector

#: Detector classes by the name used on the command line and in model files.
DETECTORS: dict[str, type[Detector]] = {
    MeanShiftDetector.name: MeanShiftDetector,
    IsolationForestDetector.name: IsolationForestDetector,
}

__all__ = ["DETECTORS", "Calibration", "Detector", "IsolationForestDetector",
           "MeanShiftDetector"]
