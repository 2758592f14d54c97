"""Anomaly detectors over per-host-window feature rows; one interface (:class:`Detector`).

>>> from netsift.detect import DETECTORS, Detector               # doctest: +SKIP
>>> model = DETECTORS["iforest"]().fit(features)
>>> model.save("model.npz"); Detector.load("model.npz").score(features)

Scores share one scale (:mod:`netsift.detect.base`): 0 typical, 0.5 at 3 robust standard
deviations above the fit median, approaching 1. The ``autoencoder`` detector needs PyTorch
(``pip install 'netsift[torch]'``); importing this package does not.
"""

from netsift.detect.autoencoder import AutoencoderDetector, train_autoencoder
from netsift.detect.base import Calibration, Detector
from netsift.detect.ensemble import EnsembleDetector
from netsift.detect.iforest import IsolationForestDetector
from netsift.detect.meanshift import MeanShiftDetector

#: Detector classes by the name used on the command line and in model files.
DETECTORS: dict[str, type[Detector]] = {
    MeanShiftDetector.name: MeanShiftDetector,
    IsolationForestDetector.name: IsolationForestDetector,
    AutoencoderDetector.name: AutoencoderDetector,
    EnsembleDetector.name: EnsembleDetector,
}

__all__ = ["DETECTORS", "AutoencoderDetector", "Calibration", "Detector", "EnsembleDetector",
           "IsolationForestDetector", "MeanShiftDetector", "train_autoencoder"]
