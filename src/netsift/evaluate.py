"""``netsift evaluate``: how well each detector ranks labelled attack host-windows.

A labelled capture is a ``capture.pcap`` (or ``capture.pcap.gz|.xz|.zst``) with a
``labels.json`` beside it, as written by ``netsift lab`` (samples/lab/ is one). Its
host-windows are labelled from the attacks' addresses and spans:

- **attack** (positive): the node is an attack's ``attacker`` and the window overlaps the
  attack's span, extended by :data:`TAIL_S` for packets still in flight when the tool
  exits (with ``--node dst``: the node is one of its ``victims``);
- **excluded** (not scored): with ``--node src``, a victim's windows during the attack
  (its replies are caused by the attack: neither attack nor normal behaviour), and an
  attacker's windows outside its attack spans (stragglers of the attack);
- **normal** (negative): everything else.

Each detector is fitted unsupervised on all of a capture's host-windows (no labels), then
its scores are compared with the labels: ROC-AUC, average precision, precision at k (k =
number of attack host-windows), and whether every attack host-window outranks every
normal one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from netsift.errors import UsageError
from netsift.features import FeatureSpec, compute_features
from netsift.schema import address_to_text

TAIL_S = 2.0


@dataclass
class Labelled:
    """A labelled capture's host-windows: features, labels and the excluded rows."""

    name: str
    features: pa.Table
    attack: np.ndarray     # bool per row
    excluded: np.ndarray   # bool per row
    kinds: list[str]       # attack kind per row ("" for none)


@dataclass
class Scores:
    capture: str
    detector: str
    roc_auc: float
    average_precision: float
    precision_at_k: float
    k: int
    normals: int
    excluded: int
    separated: bool        # min attack score > max normal score
    normals_above: int     # normal host-windows scoring above the lowest attack one
    seconds: float


def find_labelled(path: str | Path) -> tuple[Path, Path]:
    """(capture, labels.json) for a lab directory or a capture with labels.json beside it."""
    path = Path(path)
    capture = path
    if path.is_dir():
        found = [path / f"capture.pcap{suffix}" for suffix in ("", ".gz", ".xz", ".zst")]
        capture = next((f for f in found if f.exists()), found[0])
    labels = capture.parent / "labels.json"
    if not capture.exists():
        raise UsageError(f"{path}: no capture.pcap (make one with netsift lab)")
    if not labels.exists():
        raise UsageError(f"{capture}: no labels.json beside it")
    return capture, labels


def label_rows(features: pa.Table, labels: dict, spec: FeatureSpec) -> tuple[np.ndarray, ...]:
    """(attack, excluded, kind) per feature row, by the rules in the module docstring."""
    nodes = np.array([address_to_text(n) for n in features.column("node").to_pylist()],
                     dtype=object)
    starts = features.column("window_start").to_numpy()
    ends = starts + spec.window_ns
    attack = np.zeros(len(nodes), dtype=bool)
    excluded = np.zeros(len(nodes), dtype=bool)
    kinds = np.full(len(nodes), "", dtype=object)
    attackers = set()
    for entry in labels.get("attacks", []):
        if not entry.get("start"):
            continue
        span_start = int(entry["start"] * 1e9)
        span_end = int((entry["end"] + TAIL_S) * 1e9)
        during = (starts < span_end) & (ends > span_start)
        attackers.add(entry["attacker"])
        victims = set(entry.get("victims", []))
        if spec.node == "src":
            hit = during & (nodes == entry["attacker"])
            excluded |= during & np.isin(nodes, list(victims))
        else:
            hit = during & np.isin(nodes, list(victims))
        attack |= hit
        kinds[hit & (kinds == "")] = entry["kind"]
    if spec.node == "src":
        excluded |= np.isin(nodes, list(attackers)) & ~attack
    excluded &= ~attack
    return attack, excluded, kinds


def load_labelled(path: str | Path, spec: FeatureSpec) -> Labelled:
    import netsift

    capture, labels_path = find_labelled(path)
    try:
        labels = json.loads(labels_path.read_text())
    except ValueError as exc:
        raise UsageError(f"{labels_path}: not JSON ({exc})") from None
    features = compute_features(netsift.read_table(capture), spec)
    attack, excluded, kinds = label_rows(features, labels, spec)
    if not attack.any():
        raise UsageError(f"{capture}: no host-window matches an attack in {labels_path}")
    return Labelled(str(capture), features, attack, excluded, list(kinds))


def score_detector(labelled: Labelled, detector_name: str, spec: FeatureSpec,
                   seed: int = 0, device: str = "auto") -> Scores:
    import time

    from sklearn.metrics import average_precision_score, roc_auc_score

    from netsift.pipeline import new_detector

    started = time.perf_counter()
    detector = new_detector(detector_name, seed=seed, device=device)
    detector.fit(labelled.features, [f.name for f in spec.features])
    scores = detector.score(labelled.features)
    seconds = time.perf_counter() - started
    keep = ~labelled.excluded
    truth, ranked = labelled.attack[keep], scores[keep]
    k = int(truth.sum())
    top = np.argsort(-ranked, kind="stable")[:k]
    normal_scores = ranked[~truth]
    lowest_attack = ranked[truth].min()
    return Scores(
        capture=labelled.name, detector=detector_name,
        roc_auc=float(roc_auc_score(truth, ranked)) if normal_scores.size else float("nan"),
        average_precision=float(average_precision_score(truth, ranked)),
        precision_at_k=float(truth[top].mean()), k=k, normals=int((~truth).sum()),
        excluded=int(labelled.excluded.sum()),
        separated=bool(normal_scores.size == 0 or lowest_attack > normal_scores.max()),
        normals_above=int((normal_scores >= lowest_attack).sum()), seconds=seconds)


def evaluate(paths: list[str], detectors: list[str], spec: FeatureSpec, *, seed: int = 0,
             device: str = "auto") -> list[Scores]:
    """Every detector on every labelled capture, in that order."""
    results = []
    for path in paths:
        labelled = load_labelled(path, spec)
        for name in detectors:
            results.append(score_detector(labelled, name, spec, seed=seed, device=device))
    return results
