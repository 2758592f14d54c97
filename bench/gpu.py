"""Benchmark netsift's GPU paths against the CPU: the feature query and autoencoder training.

    python bench/gpu.py                       # 2 M packets, 100 000 feature rows
    python bench/gpu.py --packets 2e7 --rows 1000000 --json bench/out/gpu.json

Features: the packet dataset of ``bench/features.py`` (written once under ``bench/data/``),
run by the Polars engine on the CPU (the compiled kernel, and the lazy query on Polars'
streaming engine) and on the GPU (the lazy query on cudf-polars, ``device="gpu"``).
Autoencoder: ``AutoencoderDetector.fit`` on synthetic rows (30 correlated features),
``device="cpu"`` then ``"cuda"``. Times are wall seconds of one run after one warm-up run
(first-call costs: numba compilation, CUDA context creation).

Where a GPU side cannot run, its row says ``gpu: not available (reason)``, with the one-line
reason netsift gives (no GPU, CPU-only torch, cudf-polars not installed, or a query the
GPU engine cannot run), and the CPU rows are still measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine, write_json  # noqa: E402


def _timed(run) -> float:
    run()  # warm-up
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _feature_rows(dataset: Path) -> list[dict]:
    from netsift.errors import NetsiftError
    from netsift.features import polars_engine as pe

    packets = sum(_parquet_rows(f) for f in pe.packet_files(dataset))
    rows = []
    for label, engine, device in (("cpu (kernel)", pe.KERNEL, "cpu"),
                                  ("cpu (lazy query, streaming)", "streaming", "cpu"),
                                  ("gpu (lazy query, cudf-polars)", "streaming", "gpu")):
        try:
            seconds = _timed(lambda engine=engine, device=device:
                             pe.collect(dataset, engine=engine, device=device))
        except NetsiftError as exc:
            rows.append({"task": "features", "device": _not_available(exc),
                         "items": packets, "seconds": None})
            continue
        rows.append({"task": "features", "device": label, "items": packets,
                     "seconds": seconds})
    return rows


def _not_available(exc: Exception) -> str:
    """netsift's one-line reason, without the "device gpu:" and "use device ..." frame."""
    reason = str(exc).removeprefix("device gpu: ").removesuffix("; use device cpu or auto")
    return f"gpu: not available ({reason})"


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _autoencoder_rows(n_rows: int, epochs: int) -> list[dict]:
    from netsift.detect import AutoencoderDetector
    from netsift.errors import NetsiftError
    from netsift.platform import gpu

    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(n_rows, 4))
    matrix = np.exp(hidden @ rng.normal(size=(4, 30)) + rng.normal(scale=0.3,
                                                                    size=(n_rows, 30)))
    rows = []
    for label, device in (("cpu", "cpu"), ("gpu (cuda)", "gpu")):
        try:
            torch_device = gpu.resolve_device(device, "torch")
            seconds = _timed(lambda torch_device=torch_device: AutoencoderDetector(
                device=torch_device, epochs=epochs, seed=1).fit(matrix))
        except NetsiftError as exc:
            rows.append({"task": f"autoencoder fit, {epochs} epochs",
                         "device": _not_available(exc), "items": n_rows,
                         "seconds": None})
            continue
        rows.append({"task": f"autoencoder fit, {epochs} epochs", "device": label,
                     "items": n_rows, "seconds": seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--packets", type=float, default=2e6,
                        help="packets in the feature dataset, one hour (default 2e6)")
    parser.add_argument("--rows", type=int, default=100_000,
                        help="feature rows the autoencoder trains on (default 100000)")
    parser.add_argument("--epochs", type=int, default=5, help="autoencoder epochs (5)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write results here")
    args = parser.parse_args(argv)

    from features import make_dataset

    from netsift.platform import gpu

    found = gpu.discover()
    print("\n".join(found.lines()), file=sys.stderr)
    print(f"dataset: {int(args.packets):,} packets ...", file=sys.stderr)
    results = _feature_rows(make_dataset(int(args.packets), 1))
    results += _autoencoder_rows(args.rows, args.epochs)
    cpu_seconds: dict[str, float] = {}  # the fastest CPU run of each task
    for r in results:
        if r["device"].startswith("cpu"):
            cpu_seconds[r["task"]] = min(r["seconds"], cpu_seconds.get(r["task"], np.inf))
    table = []
    for r in results:
        rate = r["items"] / r["seconds"] if r["seconds"] else None
        speedup = cpu_seconds[r["task"]] / r["seconds"] \
            if r["seconds"] and r["device"].startswith("gpu") else None
        r.update(rate=rate, gpu_speedup=speedup)
        table.append((r["task"], r["device"], r["items"], r["seconds"], rate, speedup))
    print(format_table(["task", "device", "packets / rows", "seconds", "per second",
                        "GPU speed-up (vs fastest CPU)"], table))
    if args.json:
        write_json(args.json, {"machine": machine(), "discovery": found.lines(),
                               "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
