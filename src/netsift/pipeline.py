"""``netsift analyze``: ingest -> features -> fit (or load) a detector -> scores, alerts, report.

Output directory layout (README, "Using it"):

    OUT/packets/            the packet dataset (``netsift ingest``; re-runs skip what is there)
    OUT/features.parquet    one row per node and window (docs/features.md)
    OUT/scores.parquet      node, window, score, rank, alert flag, per-member scores
    OUT/alerts.jsonl        one JSON object per host-window scoring >= the threshold
    OUT/model.npz           the fitted detector (absent with --model: that file was used)
    OUT/report.html         self-contained report

The stream mode scores closed windows with the same :func:`score_features`, so an alert
from ``netsift stream --model`` has the same shape as one from ``netsift analyze``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from netsift import store
from netsift.errors import StorageError, UsageError
from netsift.features import FeatureSpec, compute_features
from netsift.features.spec import NODE, WINDOW_START
from netsift.schema import address_to_text

log = logging.getLogger("netsift.pipeline")

#: The default detector, chosen by ``netsift evaluate`` on lab captures (docs/detect.md).
DEFAULT_DETECTOR = "iforest"
#: Alert when the score reaches this: 0.5 = 3 robust standard deviations above the
#: median host-window of the fit (docs/detect.md explains the scale).
DEFAULT_THRESHOLD = 0.5
TOP_FEATURES = 3
SCORE_SCHEMA_KEYS = (NODE, WINDOW_START, "window_end", "score", "rank", "alert")
#: The files ``analyze`` writes in OUT, each through a scratch file renamed into place.
OUTPUTS = ("features.parquet", "scores.parquet", "alerts.jsonl", "model.npz", "report.html")


@dataclass
class AnalyzeOptions:
    """What ``netsift analyze`` does; every field has the CLI's default."""

    window_ns: int = 60_000_000_000
    node: str = "src"
    validated_only: bool = False
    detector: str = DEFAULT_DETECTOR
    model: Path | None = None  # score with this fitted model instead of fitting one
    threshold: float = DEFAULT_THRESHOLD
    top_features: int = TOP_FEATURES
    engine: str = "polars"
    master: str | None = None
    spark_preset: str | None = None
    jobs: int | None = None
    device: str = "auto"
    seed: int = 0
    report: bool = True

    def spec(self) -> FeatureSpec:
        return FeatureSpec(window_ns=self.window_ns, node=self.node,
                           validated_only=self.validated_only)


@dataclass
class AnalyzeResult:
    out: Path
    packets: int
    host_windows: int
    alerts: int
    detector: str
    model: Path
    report: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    ingest_failures: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


# -- scoring, shared with the stream mode --------------------------------------------------

def iso(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC with microseconds."""
    return dt.datetime.fromtimestamp(ns // 1000 / 1e6, dt.UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def score_features(detector, features: pa.Table, *, window_ns: int,
                   threshold: float = DEFAULT_THRESHOLD, k: int = TOP_FEATURES,
                   model_name: str = "") -> tuple[pa.Table, list[dict]]:
    """Score a feature table: the scores table and the alerts (highest score first).

    An alert is one host-window with ``score >= threshold``::

        {"window_start": "...Z", "window_end": "...Z", "window_start_ns": int,
         "node": "10.0.0.7", "score": 0.93, "detector": "ensemble", "model": "model.npz",
         "top_features": [{"feature": "dst_ports", "value": 1000.0, "typical": 1.0,
                           "weight": 0.41}, ...]}
    """
    from netsift.detect.ensemble import EnsembleDetector

    scores = detector.score(features) if features.num_rows else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    starts = features.column(WINDOW_START).to_numpy()
    flagged = scores >= threshold
    columns = {
        NODE: features.column(NODE), WINDOW_START: features.column(WINDOW_START),
        "window_end": pa.array(starts + window_ns, pa.int64()),
        "score": pa.array(scores, pa.float64()), "rank": pa.array(rank),
        "alert": pa.array(flagged),
    }
    if isinstance(detector, EnsembleDetector) and features.num_rows:
        for name, values in detector.member_scores(features).items():
            columns[f"score_{name}"] = pa.array(values, pa.float64())
    table = pa.table(columns)
    alerts: list[dict] = []
    picked = [i for i in order if flagged[i]]
    if picked:
        subset = features.take(pa.array(picked))
        reasons = detector.explain(subset, k)
        nodes = subset.column(NODE).to_pylist()
        for row, i in enumerate(picked):
            start = int(starts[i])
            alerts.append({
                "window_start": iso(start), "window_end": iso(start + window_ns),
                "window_start_ns": start, "node": address_to_text(nodes[row]),
                "score": round(float(scores[i]), 6), "detector": detector.name,
                "model": model_name, "top_features": reasons[row],
            })
    return table, alerts


def load_scorer(path: str | os.PathLike, spec: FeatureSpec, *,
                threshold: float = DEFAULT_THRESHOLD, k: int = TOP_FEATURES,
                device: str | None = None
                ) -> Callable[[pa.Table], tuple[pa.Table, list[dict]]]:
    """A fitted model as ``score(features) -> (scores, alerts)`` for the stream mode."""
    from netsift.detect import Detector

    options = {"device": device} if device else {}
    detector = Detector.load(path, **options)
    _check_model_features(detector, spec, path)
    name = Path(path).name
    return lambda features: score_features(detector, features, window_ns=spec.window_ns,
                                           threshold=threshold, k=k, model_name=name)


def _check_model_features(detector, spec: FeatureSpec, path) -> None:
    missing = [f for f in detector.features if f not in {x.name for x in spec.features}]
    if missing:
        raise UsageError(f"{path}: the model needs features this run does not compute: "
                         f"{', '.join(missing)}")


def write_alerts(path: Path, alerts: list[dict]) -> None:
    _atomic_write(path, "".join(json.dumps(a, sort_keys=True) + "\n" for a in alerts).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = store.scratch_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = store.scratch_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{path}: cannot write ({exc.strerror or exc})") from None


# -- the batch job -------------------------------------------------------------------------

def new_detector(name: str, *, seed: int = 0, device: str = "auto"):
    """A detector by registry name, with the options that apply to it."""
    import inspect

    from netsift.detect import DETECTORS

    kind = DETECTORS.get(name)
    if kind is None:
        raise UsageError(f"unknown detector {name!r}: use one of {', '.join(sorted(DETECTORS))}")
    params = inspect.signature(kind.__init__).parameters
    options = {"seed": seed}
    if "device" in params:  # torch detectors: auto | cpu | cuda
        options["device"] = "cuda" if device == "gpu" else device
    return kind(**options)


def _dataset_files(root: Path, report) -> list[str]:
    """The packet files that belong to this run's inputs (not others ingested earlier)."""
    from netsift import store

    manifest = store.Manifest.load(root)
    files: list[str] = []
    for result in report.results:
        if result.status == "ingested":
            files.extend(result.files)
        elif result.status == "current":
            entry = manifest.inputs.get(os.path.realpath(result.path))
            if entry:
                files.extend(entry["files"])
    return [str(root / f) for f in files if (root / f).exists()]


def analyze(inputs: list[str], out: str | os.PathLike, options: AnalyzeOptions | None = None,
            *, on_ingest_result=None, on_progress=None,
            on_stage: Callable[[str], None] | None = None) -> AnalyzeResult:
    """Run the whole batch pipeline over capture files; see the module docstring."""
    from netsift.detect import Detector
    from netsift.ingest.job import ingest

    options = options or AnalyzeOptions()
    if not 0 < options.threshold < 1:
        raise UsageError(f"--threshold must be in (0, 1), not {options.threshold}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # what a killed run left half-written
        store.clear_leftovers(out / name)
    say = on_stage or (lambda _text: None)
    seconds: dict[str, float] = {}
    spec = options.spec()

    started = time.perf_counter()
    if options.engine == "spark":
        from netsift.ingest.spark_ingest import spark_ingest

        report = spark_ingest(inputs, out / "packets", master=options.master,
                              on_result=on_ingest_result)
    else:
        report = ingest(inputs, out / "packets", jobs=options.jobs,
                        on_result=on_ingest_result, on_progress=on_progress)
    seconds["ingest"] = time.perf_counter() - started
    files = _dataset_files(out / "packets", report)
    if not files:
        raise UsageError("no packets to analyze: every input failed or held no packets")
    skipped: dict[str, int] = {}
    for result in report.results:
        for reason, count in result.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count

    say("features")
    started = time.perf_counter()
    features = compute_features(files, spec, engine=options.engine, master=options.master,
                                device=options.device if options.engine == "polars" else "cpu",
                                spark_preset=options.spark_preset)
    seconds["features"] = time.perf_counter() - started
    if features.num_rows == 0:
        raise UsageError("the inputs hold no IP packets with timestamps: nothing to analyze")
    _atomic_parquet(features, out / "features.parquet")

    started = time.perf_counter()
    if options.model is not None:
        say(f"scoring with {options.model}")
        detector = Detector.load(options.model, **_load_options(options))
        _check_model_features(detector, spec, options.model)
        model_path = Path(options.model)
    else:
        say(f"fitting {options.detector} on {features.num_rows:,} host-windows")
        detector = new_detector(options.detector, seed=options.seed, device=options.device)
        detector.fit(features, [f.name for f in spec.features])
        model_path = detector.save(out / "model.npz")
    seconds["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    scores, alerts = score_features(detector, features, window_ns=spec.window_ns,
                                    threshold=options.threshold, k=options.top_features,
                                    model_name=model_path.name)
    _atomic_parquet(scores, out / "scores.parquet")
    write_alerts(out / "alerts.jsonl", alerts)
    seconds["score"] = time.perf_counter() - started

    report_path = None
    if options.report:
        from netsift.report import build_report

        say("report")
        started = time.perf_counter()
        report_path = build_report(out / "report.html", features, scores, detector, alerts,
                                   window_ns=spec.window_ns, threshold=options.threshold,
                                   inputs=inputs, packets=report.packets or
                                   _packets_in(features))
        seconds["report"] = time.perf_counter() - started
    return AnalyzeResult(
        out=out, packets=_packets_in(features), host_windows=features.num_rows,
        alerts=len(alerts), detector=detector.name, model=model_path, report=report_path,
        seconds=seconds, ingest_failures=[r.error for r in report.failed], skipped=skipped)


def _load_options(options: AnalyzeOptions) -> dict:
    """Options for loading a model: the device, for the detectors that take one."""
    return {} if options.device == "auto" else \
        {"device": "cuda" if options.device == "gpu" else options.device}


def _packets_in(features: pa.Table) -> int:
    import pyarrow.compute as pc

    if "packets" not in features.column_names:
        return 0
    return int(pc.sum(features.column("packets")).as_py() or 0)
