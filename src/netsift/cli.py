"""The ``netsift`` command. Thin: parse arguments, call the API, print one-line outcomes.

Exit status: 0 success, 1 some input or the run failed (each failure printed on one
line), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from netsift import __version__
from netsift.errors import NetsiftError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _say(message: str) -> None:
    print(f"netsift: {message}", file=sys.stderr)


class _Progress:
    """A tqdm bar over bytes on a terminal; silent otherwise or with --quiet."""

    def __init__(self, quiet: bool, desc: str):
        self._bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False)

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = max(total, done)
            self._bar.n = done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_ingest(args: argparse.Namespace) -> int:
    from netsift import store
    from netsift.errors import UsageError
    from netsift.ingest.job import ingest

    def on_result(result) -> None:
        if result.status == "failed":
            _say(f"error: {result.error}")
        elif result.status == "not-a-capture":
            _say(f"skipped: {result.error}")
        elif result.status == "current" and args.verbose:
            _say(f"{result.path}: already ingested, unchanged")
        for reason, count in result.skipped.items():
            _say(f"warning: {result.path}: {count} {reason}")

    if args.engine == "spark":
        from netsift.ingest.spark_ingest import spark_ingest

        if args.jobs:
            raise UsageError("--jobs is for --engine embedded; Spark runs a task per core")
        report = spark_ingest(args.inputs, args.out, master=args.master,
                              batch_rows=args.batch_rows, force=args.force,
                              on_result=on_result)
    else:
        if args.master:
            raise UsageError("--master needs --engine spark")
        progress = _Progress(args.quiet, "ingest")
        try:
            report = ingest(args.inputs, args.out, jobs=args.jobs, batch_rows=args.batch_rows,
                            force=args.force, on_progress=progress, on_result=on_result)
        finally:
            progress.close()
    size = sum(os.path.getsize(f) for f in store.dataset_files(args.out))
    rate = report.packets / report.seconds if report.seconds else 0.0
    parts = [f"{report.count('ingested')} ingested"]
    for status, label in (("current", "already ingested"), ("not-a-capture", "not captures"),
                          ("failed", "failed")):
        if report.count(status):
            parts.append(f"{report.count(status)} {label}")
    if not args.quiet:
        print(f"{', '.join(parts)}: {report.packets:,} packets in {report.seconds:.1f} s "
              f"({rate:,.0f} packets/s) -> {args.out} ({_human_bytes(size)})")
    return EXIT_FAILED if report.failed else EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """Describe captures: format, packets, time span, skips."""
    import datetime as dt

    import pyarrow.compute as pc

    from netsift.ingest.reader import CaptureReader

    status = EXIT_OK
    for path in args.captures:
        reader = CaptureReader(path)
        first = last = None
        try:
            for batch in reader:
                lo, hi = pc.min_max(batch.column("ts")).values()
                if lo.is_valid:
                    first = lo.as_py() if first is None else min(first, lo.as_py())
                    last = hi.as_py() if last is None else max(last, hi.as_py())
        except NetsiftError as exc:
            _say(f"error: {exc}")
            status = EXIT_FAILED
            continue
        stats = reader.stats
        span = ""
        if first is not None:
            fmt = "%Y-%m-%d %H:%M:%S"
            start = dt.datetime.fromtimestamp(first / 1e9, dt.UTC).strftime(fmt)
            end = dt.datetime.fromtimestamp(last / 1e9, dt.UTC).strftime(fmt)
            span = f", {start} .. {end} UTC"
        kind = stats.format + (f" ({stats.compression})" if stats.compression else "")
        print(f"{path}: {kind}, {stats.packets:,} packets{span}")
        for reason, count in stats.skipped.items():
            print(f"  skipped: {count} {reason}")
    return status


def cmd_lab(args: argparse.Namespace) -> int:
    from pathlib import Path

    from netsift.lab import run_lab

    result = run_lab(Path(args.out), seconds=args.seconds, clients=args.clients,
                     servers=args.servers,
                     seed=args.seed, on_event=None if args.quiet else _say)
    if not args.quiet:
        kinds = ", ".join(f"{a.kind} from {a.attacker}" for a in result.attacks)
        print(f"wrote {result.capture} and {result.labels}: {len(result.hosts)} hosts; "
              f"attacks: {kinds}")
    return EXIT_OK


def _check_spark_options(args: argparse.Namespace) -> None:
    from netsift.errors import UsageError

    for name in ("master", "spark_preset"):
        if getattr(args, name) and args.engine != "spark":
            raise UsageError(f"--{name.replace('_', '-')} needs --engine spark")


def cmd_features(args: argparse.Namespace) -> int:
    from netsift.features import FeatureSpec, write_features

    _check_spark_options(args)
    spec = FeatureSpec(window_ns=args.window, node=args.node,
                       validated_only=args.validated_only)
    run = write_features(args.packets, args.out, spec, engine=args.engine, master=args.master,
                         device=args.device, spark_preset=args.spark_preset,
                         compression=args.compression)
    if not args.quiet:
        rate = run.packets / run.seconds if run.seconds else 0.0
        print(f"{run.rows:,} node-windows from {run.packets:,} packets in {run.seconds:.1f} s "
              f"({rate:,.0f} packets/s, {run.engine}) -> {run.out}")
    return EXIT_OK


def _analyze_options(args: argparse.Namespace):
    from pathlib import Path

    from netsift.pipeline import DEFAULT_DETECTOR, DEFAULT_THRESHOLD, AnalyzeOptions

    return AnalyzeOptions(
        window_ns=args.window, node=args.node, validated_only=args.validated_only,
        detector=args.detector or DEFAULT_DETECTOR,
        model=Path(args.model) if args.model else None,
        threshold=DEFAULT_THRESHOLD if args.threshold is None else args.threshold,
        top_features=args.top_features, engine=args.engine,
        master=args.master, spark_preset=args.spark_preset, jobs=args.jobs,
        device=args.device, seed=args.seed, report=not args.no_report)


def cmd_analyze(args: argparse.Namespace) -> int:
    from netsift.pipeline import analyze

    _check_spark_options(args)
    failures = []

    def on_result(result) -> None:
        if result.status == "failed":
            failures.append(result.error)
            _say(f"error: {result.error}")
        elif result.status == "not-a-capture":
            _say(f"skipped: {result.error}")
        for reason, count in result.skipped.items():
            _say(f"warning: {result.path}: {count} {reason}")

    progress = _Progress(args.quiet, "ingest")
    try:
        result = analyze(args.inputs, args.out, _analyze_options(args),
                         on_ingest_result=on_result, on_progress=progress,
                         on_stage=None if args.quiet else lambda text: _say(text))
    finally:
        progress.close()
    if not args.quiet:
        seconds = sum(result.seconds.values())
        print(f"{result.packets:,} packets, {result.host_windows:,} host-windows, "
              f"{result.alerts:,} alerts ({result.detector}) in {seconds:.1f} s -> {result.out}")
        if result.report is not None:
            print(f"report: {result.report}")
        print(f"alerts: {result.out / 'alerts.jsonl'}")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from netsift.evaluate import evaluate
    from netsift.features import FeatureSpec

    spec = FeatureSpec(window_ns=args.window, node=args.node)
    results = evaluate(args.labelled, args.detectors, spec, seed=args.seed, device=args.device)
    header = ("capture", "detector", "ROC-AUC", "AP", "P@k", "k", "normal", "excluded",
              "separated")
    rows = [(r.capture, r.detector, f"{r.roc_auc:.3f}", f"{r.average_precision:.3f}",
             f"{r.precision_at_k:.3f}", str(r.k), str(r.normals), str(r.excluded),
             "yes" if r.separated else f"no ({r.normals_above} normal above)")
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.json:
        import json
        from dataclasses import asdict

        with open(args.json, "w") as out:
            json.dump([asdict(r) for r in results], out, indent=1)
    return EXIT_OK


def cmd_stream(args: argparse.Namespace) -> int:
    from pathlib import Path

    from netsift.errors import UsageError
    from netsift.stream.job import build_stream_job
    from netsift.stream.runner import StreamConfig, status_printer, summary

    if args.engine == "spark":
        if not args.spool:
            raise UsageError("--engine spark reads a --spool directory")
        from netsift.stream.spark_stream import run_spark_stream

        return run_spark_stream(args)
    config = StreamConfig(
        out=Path(args.out), window_s=args.window / 1e9, lateness_s=args.lateness / 1e9,
        node=args.node, validated_only=args.validated_only,
        model=Path(args.model) if args.model else None,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        settle_s=args.settle / 1e9, drain=args.drain,
        status=None if args.quiet else status_printer())
    job = build_stream_job(config)
    job.install_signal_handlers()
    if args.spool:
        stats = job.run_spool(Path(args.spool))
    else:
        stats = job.run_interface(args.interface, args.capture_tool, args.filter or "")
    if not args.quiet:
        print(("\n" if sys.stderr.isatty() else "") + summary(stats))
    return EXIT_FAILED if stats.failed_files else EXIT_OK


def cmd_platform_check(args: argparse.Namespace) -> int:
    from netsift.platform.check import run_check

    run_check(master=args.master, device=args.device, processes=args.processes,
              epochs=args.epochs, spark_preset=args.spark_preset, timeout=args.timeout,
              on_line=lambda line: print(line, flush=True))
    return EXIT_OK


def _duration(text: str) -> int:
    from netsift.errors import UsageError
    from netsift.features import parse_duration

    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _feature_options(p: argparse.ArgumentParser) -> None:
    """Window, node and engine options shared by the commands that compute features."""
    p.add_argument("--window", type=_duration, default="60s", metavar="DURATION",
                   help="window length, aligned to the epoch: 500ms, 60s, 5m, 1h (default 60s)")
    p.add_argument("--node", choices=("src", "dst"), default="src",
                   help="whose behaviour: senders (src, default) or receivers (dst)")
    p.add_argument("--validated-only", action="store_true",
                   help="keep only packets from sources that completed a TCP three-way "
                        "handshake in the window")
    p.add_argument("--engine", choices=("polars", "spark"), default="polars",
                   help="polars (in process, default) or spark")
    p.add_argument("--master", metavar="URL",
                   help="Spark master: local[N], spark://HOST:PORT, yarn, k8s://... "
                        "(default local[*])")
    p.add_argument("--spark-preset", choices=("cpu", "gpu"),
                   help="Spark settings for CPU executors or GPU scheduling "
                        "(docs/deploy.md); with --engine spark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netsift",
        description="Per-host behaviour features and security alerts from packet captures.")
    parser.add_argument("--version", action="version", version=f"netsift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "ingest", help="read captures into a Parquet packet dataset",
        description="Read pcap/pcapng captures (plain or gzip/xz/bzip2/zstd; directories "
                    "are searched recursively; '-' reads a pcap stream from stdin) into a "
                    "Parquet packet dataset partitioned by hour. Inputs already ingested "
                    "and unchanged are skipped.")
    p.add_argument("inputs", nargs="+", metavar="CAPTURE", help="capture file, directory or -")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="dataset directory")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None,
                   help="worker processes (default: one per core)")
    p.add_argument("--batch-rows", type=_positive_int, default=256 * 1024,
                   help="packets per Arrow batch / Parquet row group (default 262144)")
    p.add_argument("--force", action="store_true", help="re-ingest inputs already ingested")
    p.add_argument("--engine", choices=("embedded", "spark"), default="embedded",
                   help="embedded (worker processes here, default) or spark (executors "
                        "read the files; see docs/spark.md)")
    p.add_argument("--master", metavar="URL",
                   help="Spark master with --engine spark: local[N], spark://HOST:PORT, "
                        "yarn, k8s://... (default local[*])")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.add_argument("--verbose", "-v", action="store_true", help="also list skipped inputs")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "lab", help="record a labelled capture of a small LAN with real attacks (root)",
        description="Build a LAN of network namespaces on a bridge (servers with HTTP and "
                    "DNS, normal clients, and attackers: nmap SYN scan, nmap ping sweep, "
                    "hping3 SYN and UDP floods, a slow scan), capture it with tcpdump and "
                    "write DIR/capture.pcap and DIR/labels.json. Needs root.")
    p.add_argument("--out", "-o", required=True, metavar="DIR")
    p.add_argument("--seconds", type=_positive_int, default=150,
                   help="run time (default 150, at least 40)")
    p.add_argument("--clients", type=_positive_int, default=24, help="normal clients (24)")
    p.add_argument("--servers", type=_positive_int, default=3,
                   help="servers, each with HTTP and DNS; attacks aim at the first (3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the clients' behaviour")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser(
        "features", help="per-node, per-window NAGM features of a packet dataset",
        description="Compute NAGM behaviour features (docs/features.md) for every node "
                    "and tumbling window of a packet dataset, and write them as a Parquet "
                    "table directory (replacing an earlier one there).")
    p.add_argument("packets", nargs="+", metavar="PACKETS",
                   help="packet dataset directory (netsift ingest --out) or Parquet file")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="feature table directory")
    _feature_options(p)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="Polars engine on the CPU or the GPU (cudf-polars; docs/gpu.md)")
    p.add_argument("--compression", choices=("zstd", "snappy", "gzip", "none"), default="zstd",
                   help="Parquet codec of the table (default zstd; none: fastest, "
                        "about 1.8x the bytes)")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "analyze", help="the main job: captures -> features -> detector -> alerts and report",
        description="Ingest captures into OUT/packets, compute NAGM features per node and "
                    "window (OUT/features.parquet), fit a detector on them or score with "
                    "--model (OUT/model.npz), and write OUT/scores.parquet, OUT/alerts.jsonl "
                    "(host-windows scoring >= --threshold) and OUT/report.html. Re-runs "
                    "skip captures already ingested.")
    p.add_argument("inputs", nargs="+", metavar="CAPTURE", help="capture file, directory or -")
    p.add_argument("--out", "-o", required=True, metavar="DIR")
    _feature_options(p)
    p.add_argument("--detector", default=None, metavar="NAME",
                   help="detector to fit: iforest (default), meanshift, autoencoder, ensemble")
    p.add_argument("--model", metavar="FILE",
                   help="score with this fitted model (an earlier OUT/model.npz) instead")
    p.add_argument("--threshold", type=float, default=None, metavar="SCORE",
                   help="alert when the score reaches this, in (0, 1) (default 0.5: 3 robust "
                        "standard deviations above the typical host-window)")
    p.add_argument("--top-features", type=_positive_int, default=3, metavar="K",
                   help="features explaining each alert (default 3)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where features (Polars engine) and the autoencoder run "
                        "(default auto: a GPU where one can be used)")
    p.add_argument("--seed", type=int, default=0, help="seed of randomised detectors (0)")
    p.add_argument("--jobs", "-j", type=_positive_int, default=None,
                   help="ingest worker processes (default: one per core)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "evaluate", help="rank labelled captures with each detector: ROC-AUC, AP, P@k",
        description="For each labelled capture (a netsift lab directory, or a capture with "
                    "labels.json beside it), compute features, fit every detector without "
                    "labels, and print ROC-AUC, average precision and precision at k (k = "
                    "attack host-windows) against the labels (docs/detect.md).")
    p.add_argument("labelled", nargs="+", metavar="LAB", help="lab directory or capture")
    p.add_argument("--detectors", nargs="+", metavar="NAME",
                   default=["iforest", "meanshift", "autoencoder", "ensemble"])
    p.add_argument("--window", type=_duration, default="10s", metavar="DURATION",
                   help="window length (default 10s: lab captures last minutes)")
    p.add_argument("--node", choices=("src", "dst"), default="src")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "stream", help="the same analysis over a live interface or a spool directory",
        description="Read packets continuously, from a spool directory where rotating "
                    "captures appear (tcpdump -G/-C, dumpcap -b; a file is read once it is "
                    "complete) or from a live interface (through a tcpdump/dumpcap "
                    "subprocess). Each tumbling window closes when the watermark (newest "
                    "packet time minus --lateness) passes its end; it is then featurised, "
                    "scored with --model, and written to OUT/features/, OUT/scores/ and "
                    "OUT/alerts.jsonl. A checkpoint makes a restart after a crash lose and "
                    "repeat nothing. SIGTERM/SIGINT stop gracefully.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--spool", metavar="DIR", help="directory of rotating captures")
    source.add_argument("--interface", "-i", metavar="IFACE", help="live capture interface")
    p.add_argument("--out", "-o", required=True, metavar="DIR")
    p.add_argument("--window", type=_duration, default="60s", metavar="DURATION",
                   help="window length (default 60s)")
    p.add_argument("--lateness", type=_duration, default="5s", metavar="DURATION",
                   help="allowed lateness behind the newest packet (default 5s)")
    p.add_argument("--node", choices=("src", "dst"), default="src")
    p.add_argument("--validated-only", action="store_true",
                   help="only sources that completed a TCP handshake in the window")
    p.add_argument("--model", metavar="FILE", help="fitted model to score windows with")
    p.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory "
                   "(default OUT/_checkpoint)")
    p.add_argument("--settle", type=_duration, default="5s", metavar="DURATION",
                   help="spool: a file unchanged this long counts as complete (default 5s)")
    p.add_argument("--drain", action="store_true",
                   help="spool: process the files there now, close every window, stop")
    p.add_argument("--capture-tool", choices=("dumpcap", "tcpdump"),
                   help="live: capture program (default dumpcap if installed)")
    p.add_argument("--filter", metavar="BPF", help="live: capture filter")
    p.add_argument("--engine", choices=("polars", "spark"), default="polars",
                   help="polars (in process, default) or spark (Structured Streaming)")
    p.add_argument("--master", metavar="URL", help="Spark master (with --engine spark)")
    p.add_argument("--quiet", "-q", action="store_true", help="no status line or summary")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("platform", help="check a Spark deployment of netsift",
                       description="Operator tools for a netsift deployment on Spark.")
    platform = p.add_subparsers(dest="platform_command", metavar="SUBCOMMAND")
    platform.required = True
    p = platform.add_parser(
        "check", help="smoke-test a Spark cluster: executors, GPUs, distributed training",
        description="Connect to the Spark master, list the executors with their cores and "
                    "GPUs, run a probe task on each (Python, torch, CUDA), then train a "
                    "small convolutional network on scikit-learn's handwritten digits with "
                    "PyTorch DDP across the cluster (TorchDistributor) and print the "
                    "accuracy on held-out images and the device each process used. Exit 0 "
                    "when every stage passes and the accuracy reaches 0.9.")
    p.add_argument("--master", metavar="URL",
                   help="Spark master: local[N], spark://HOST:PORT, yarn, k8s://... "
                        "(default local[*])")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="train on executor GPUs (gpu), CPUs (cpu), or GPUs where every "
                        "executor has one (auto, default)")
    p.add_argument("--processes", type=_positive_int, metavar="N",
                   help="training processes (default: one per executor, or per GPU)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="training epochs (10)")
    p.add_argument("--spark-preset", choices=("cpu", "gpu"),
                   help="start the application with netsift's cpu or gpu Spark preset "
                        "(docs/deploy.md); gpu gives each process a whole GPU")
    p.add_argument("--timeout", type=_positive_int, default=60, metavar="SECONDS",
                   help="how long to wait for the master, then for executors (60)")
    p.set_defaults(func=cmd_platform_check)

    p = sub.add_parser("info", help="describe captures (format, packets, time span)",
                       description="Read captures and print format, packet count, time "
                                   "span and any skipped records.")
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.set_defaults(func=cmd_info)
    return parser


def _log_to_stderr() -> None:
    """netsift's log records as ``netsift: message`` lines: warnings and up, plus the
    notes of ``netsift.platform`` and ``netsift.detect`` (which device runs what)."""
    import logging

    root = logging.getLogger("netsift")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("netsift: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    root.propagate = False
    for name in ("netsift.platform", "netsift.detect"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr()
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except NetsiftError as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
