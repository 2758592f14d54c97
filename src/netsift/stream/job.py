"""Assemble a stream job from its configuration: feature spec, engine, optional model.

A closed window is featurised in node shards, one thread each (the kernel releases the
GIL): a node's features depend only on its own packets, so the rows are those of one
call over all packets, in the same (window, node) order. The window buffer splits the
packets into shards as they arrive, so closing costs no extra pass. Not with
``validated_only``, where a node's handshake involves its peers' packets.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from netsift.features import NODE, WINDOW_START, FeatureSpec, compute_features
from netsift.stream.runner import StreamConfig, StreamJob

SHARD_MIN_ROWS = 1 << 20  # fewer packets: one call is as fast


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _threadsafe_kernels() -> bool:
    """Whether numba may run parallel kernels from two threads at once (not with the
    ``workqueue`` layer). Unknown until a first parallel kernel has run: then no."""
    import numba

    try:
        return numba.threading_layer() in ("omp", "tbb")
    except ValueError:
        return False


def sharded(featurize: Callable[[pa.Table], pa.Table], shards: int
            ) -> Callable[[list[pa.Table]], pa.Table]:
    """``featurize`` over node shards, in parallel when they are large; rows in order."""
    def run(parts: list[pa.Table]) -> pa.Table:
        if len(parts) < 2 or sum(p.num_rows for p in parts) < SHARD_MIN_ROWS \
                or not _threadsafe_kernels():
            return featurize(pa.concat_tables(parts))

        def part(table: pa.Table) -> pa.Table:
            import numba

            # Per thread: the shards share the cores instead of each asking for all.
            numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS,
                                             cores() // shards)))
            return featurize(table)

        with ThreadPoolExecutor(len(parts), thread_name_prefix="netsift-shard") as pool:
            rows = list(pool.map(part, parts))
        return pa.concat_tables(rows).sort_by([(WINDOW_START, "ascending"),
                                               (NODE, "ascending")])
    return run


def build_stream_job(config: StreamConfig) -> StreamJob:
    spec = FeatureSpec(window_ns=int(round(config.window_s * 1e9)), node=config.node,
                       validated_only=config.validated_only)
    score = None
    if config.model is not None:
        from netsift.pipeline import load_scorer

        score = load_scorer(config.model, spec)
    shards = 1 if spec.validated_only else \
        min(4, cores()) if config.shards is None else config.shards
    return StreamJob(config, featurize=sharded(lambda t: compute_features(t, spec), shards),
                     score=score, columns=spec.input_columns(),
                     shard_key=spec.node if shards > 1 else None, shards=shards)
