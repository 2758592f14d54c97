"""Reports: the self-contained HTML report of a batch run (:func:`build_report`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from netsift.report.html import render

TOP_HOSTS = 20
TIMELINE_HOSTS = 8
MAX_POINTS = 4000  # per plot: sampled beyond this, alerts always kept


def _window_text(start_ns: int, window_ns: int) -> str:
    from netsift.pipeline import iso

    return f"{iso(start_ns)[:19].replace('T', ' ')} + {window_ns / 1e9:g} s"


def _sample(n: int, keep: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Row indices: every ``keep`` row, plus a seeded sample of the rest up to ``limit``."""
    kept = np.flatnonzero(keep)
    rest = np.flatnonzero(~keep)
    room = max(0, limit - kept.size)
    if rest.size > room:
        rest = np.sort(np.random.default_rng(seed).choice(rest, room, replace=False))
    return np.sort(np.concatenate([kept, rest]))


def _reason(entry: dict) -> str:
    def number(v):
        return "-" if v is None else f"{v:.4g}"
    return f"{entry['feature']} = {number(entry['value'])} (typical {number(entry['typical'])})"


def build_report(path: Path, features: pa.Table, scores: pa.Table, detector, alerts: list[dict],
                 *, window_ns: int, threshold: float, inputs: list[str],
                 packets: int) -> Path:
    """Write ``report.html`` for one scored run; see :mod:`netsift.report.html`."""
    from netsift.pipeline import iso
    from netsift.schema import address_to_text

    score = scores.column("score").to_numpy()
    starts = features.column("window_start").to_numpy()
    nodes = [address_to_text(n) for n in features.column("node").to_pylist()]
    flagged = score >= threshold

    # Top hosts: each node's best window, best first.
    best: dict[str, int] = {}
    for i in np.argsort(-score, kind="stable"):
        best.setdefault(nodes[i], int(i))
        if len(best) >= TOP_HOSTS:
            break
    top_rows = list(best.values())
    reasons = detector.explain(features.take(pa.array(top_rows)), 3) if top_rows else []
    top_hosts = [{"node": nodes[i], "score": float(score[i]),
                  "window": _window_text(int(starts[i]), window_ns), "detector": detector.name,
                  "reasons": [_reason(r) for r in reasons[j]]}
                 for j, i in enumerate(top_rows)]

    timelines = []
    for node in list(best)[:TIMELINE_HOSTS]:
        rows = [i for i, n in enumerate(nodes) if n == node]
        rows.sort(key=lambda i: starts[i])
        timelines.append({"name": node, "t": [int(starts[i]) for i in rows],
                          "v": [round(float(score[i]), 4) for i in rows]})

    picked = _sample(len(score), flagged, MAX_POINTS)
    distributions = []
    for name in detector.features:
        values = features.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[picked]
        keep = np.isfinite(values)
        distributions.append({
            "name": name, "unit": _unit(name),
            "normal": [float(v) for v in values[keep & ~flagged[picked]]],
            "anomalous": [float(v) for v in values[keep & flagged[picked]]]})

    scaled = detector.scaling_.transform(detector._matrix(features.take(pa.array(picked))))
    xy = _principal_components(scaled)
    clusters_of = _cluster_ids(detector, scaled)
    clusters = [{"node": nodes[i], "t": int(starts[i]), "x": round(float(xy[j, 0]), 4),
                 "y": round(float(xy[j, 1]), 4), "s": round(float(score[i]), 4),
                 "c": None if clusters_of is None else int(clusters_of[j])}
                for j, i in enumerate(picked)]

    span = f"{iso(int(starts.min()))} .. {iso(int(starts.max()) + window_ns)}" \
        if len(starts) else "-"
    summary = [
        ("inputs", ", ".join(map(str, inputs))), ("packets read", f"{packets:,}"),
        ("time span (UTC)", span), ("window", f"{window_ns / 1e9:g} s"),
        ("host-windows", f"{features.num_rows:,}"),
        ("detector", detector.name + (f" ({', '.join(detector.members)})"
                                      if hasattr(detector, "members") else "")),
        ("alert threshold", f"score >= {threshold:g}"),
        ("alerts", f"{len(alerts):,} host-windows, {len({a['node'] for a in alerts})} hosts"),
    ]
    return render(path, title="netsift report", summary=summary, top_hosts=top_hosts,
                  timelines=timelines, distributions=distributions, clusters=clusters)


def _unit(name: str) -> str:
    from netsift.features.spec import NAGM_FEATURES

    return next((f.unit for f in NAGM_FEATURES if f.name == name), "")


def _principal_components(scaled: np.ndarray) -> np.ndarray:
    """Rows projected on their first two principal components (zeros where degenerate)."""
    if scaled.shape[0] < 2:
        return np.zeros((scaled.shape[0], 2))
    centred = scaled - scaled.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def _cluster_ids(detector, scaled: np.ndarray) -> np.ndarray | None:
    """Nearest mean shift centre per row, where the detector (or a member) has clusters."""
    from netsift.detect.meanshift import MeanShiftDetector

    candidates = [detector, *getattr(detector, "members_", [])]
    shift = next((d for d in candidates if isinstance(d, MeanShiftDetector)), None)
    if shift is None:
        return None
    centres = shift._centres
    distances = ((scaled[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return np.argmin(distances, axis=1)
