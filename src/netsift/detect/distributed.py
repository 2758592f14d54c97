"""Train the autoencoder across Spark executors: PyTorch DDP, launched by TorchDistributor.

:func:`fit_distributed` fits the scaling on the driver over all rows, then starts
``num_processes`` training processes as one Spark barrier job
(``pyspark.ml.torch.distributor.TorchDistributor`` with ``local_mode=False``: one task per
process, all scheduled at once, each running ``torchrun``). The scaled rows (float32) travel
inside the task; process ``rank`` of ``world`` trains on rows ``rank, rank + world, ...``
with :func:`~netsift.detect.autoencoder.train_autoencoder` under DistributedDataParallel
(gradients averaged over processes; gloo on CPUs, NCCL on GPUs). Rank 0 returns the
weights, and the driver builds the detector and calibrates its scores on all rows, so the
model file is the same kind :class:`~netsift.detect.AutoencoderDetector` writes.

Executors need netsift and torch in the Python that Spark starts there
(``spark.pyspark.python``); the netsift image has both. With ``use_gpu=True`` each process
gets one GPU: executors need ``spark.executor.resource.gpu.amount`` and a discovery script,
and ``spark.task.resource.gpu.amount`` must be a whole number (the gpu preset of
:mod:`netsift.platform.deploy` with the task amount set to 1).

>>> from netsift.detect.distributed import fit_distributed        # doctest: +SKIP
>>> model = fit_distributed(features, spark, num_processes=4, epochs=50)
>>> [(r.rank, r.rows, r.device) for r in model.training_ranks_]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netsift.detect.autoencoder import AutoencoderDetector
from netsift.detect.scaling import Scaling, as_matrix
from netsift.errors import NetsiftError, UsageError
from netsift.platform.spark import failure_line, quiet_pandas_check

log = logging.getLogger("netsift.detect")


@dataclass(frozen=True)
class Executor:
    """One Spark executor: ``id`` ("driver" for a local master), host, cores, GPU addresses."""

    id: str
    host: str
    cores: int
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankReport:
    """What one training process did: its rank, host, torch device and number of rows."""

    rank: int
    host: str
    device: str
    rows: int


def executors(spark) -> list[Executor]:
    """The live executors of ``spark``'s application (for a local master: the driver)."""
    sc = spark.sparkContext
    if sc.master.startswith("local"):
        return [Executor("driver", sc.getConf().get("spark.driver.host", "localhost"),
                         sc.defaultParallelism, _driver_gpus(sc))]
    # The application status store: the list the web UI's executor page shows, also kept
    # when the UI is off. Scala's private[spark] is public to the JVM, so py4j reaches it.
    summaries = sc._jsc.sc().statusStore().executorList(True)
    found = []
    for i in range(summaries.size()):
        summary = summaries.apply(i)
        if summary.id() == "driver":
            continue
        # "host" when the executor registers, "host:port" once its block manager does.
        host, colon, port = summary.hostPort().rpartition(":")
        if not (colon and port.isdigit()):
            host = summary.hostPort()
        resources = summary.resources()
        gpus = tuple(resources.apply("gpu").addresses()) if resources.contains("gpu") else ()
        found.append(Executor(summary.id(), host, int(summary.totalCores()), gpus))
    return sorted(found, key=lambda e: (len(e.id), e.id))


def _driver_gpus(sc) -> tuple[str, ...]:
    gpu = sc.resources.get("gpu")
    return tuple(gpu.addresses) if gpu is not None else ()


def wait_for_executors(spark, minimum: int = 1, timeout: float = 60.0) -> list[Executor]:
    """Executors once at least ``minimum`` registered and their number held for 1 s.

    Raises :class:`NetsiftError` when fewer registered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    found, steady_since = executors(spark), time.monotonic()
    while time.monotonic() < deadline:
        if len(found) >= minimum and time.monotonic() - steady_since >= 1.0:
            return found
        time.sleep(0.2)
        now = executors(spark)
        if len(now) != len(found):
            found, steady_since = now, time.monotonic()
    if len(found) >= minimum:
        return found
    master = spark.sparkContext.master
    raise NetsiftError(f"{len(found)} executor(s) registered with {master} within "
                       f"{timeout:.0f} s, {minimum} needed: are workers running, with free "
                       f"cores and memory for spark.executor.memory?")


def task_gpu_amount(spark) -> float:
    """``spark.task.resource.gpu.amount`` (0 when unset)."""
    return float(spark.sparkContext.getConf().get("spark.task.resource.gpu.amount", "0"))


def _wait_for_slots(spark, need: int, use_gpu: bool, timeout: float = 60.0) -> list[Executor]:
    """The executors, once they offer ``need`` task slots, or once the list has stayed the
    same for a few seconds (executors of a new application register a few seconds after
    the session starts), or after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while True:
        found = executors(spark)
        now = time.monotonic()
        if found != last:
            last, stable_since = found, now
        if task_slots(spark, found, use_gpu) >= need or now > deadline or \
                (found and now - stable_since >= 3.0):
            return found
        time.sleep(0.5)


def task_slots(spark, found: Sequence[Executor], use_gpu: bool) -> int:
    """How many tasks ``found`` run at once: the most processes one barrier job can have."""
    conf = spark.sparkContext.getConf()
    cpus = max(1, int(conf.get("spark.task.cpus", "1")))
    slots = sum(e.cores // cpus for e in found)
    if use_gpu:
        per_task = task_gpu_amount(spark)
        gpu_slots = sum(int(len(e.gpus) // per_task) for e in found) if per_task > 0 else 0
        slots = min(slots, gpu_slots)
    return slots


def gpu_setup_problem(spark, found: Sequence[Executor]) -> str:
    """Why processes on ``found`` cannot each get a GPU from Spark; "" when they can."""
    without = [e.id for e in found if not e.gpus]
    if without == ["driver"]:
        return ("the driver of the local master has no GPUs (set "
                "spark.driver.resource.gpu.amount and its discovery script)")
    if without:
        return (f"executor(s) {', '.join(without)} have no GPUs (set "
                f"spark.executor.resource.gpu.amount and a discovery script: the gpu "
                f"Spark preset)")
    amount = task_gpu_amount(spark)
    if amount < 1 or amount != int(amount):
        return (f"spark.task.resource.gpu.amount is {amount:g}; distributed training needs "
                f"a whole number of GPUs per task (set it to 1)")
    return ""


def run_distributed(spark, train: Callable[..., Any], *args: Any, num_processes: int,
                    use_gpu: bool = False) -> Any:
    """Run ``train(*args)`` in ``num_processes`` torch processes on ``spark``'s executors.

    One Spark barrier job via TorchDistributor (``local_mode=False``); each process finds
    its rank and world in the environment ``torchrun`` sets (``init_process_group()``
    with no arguments). Returns what rank 0 returned. Fails fast, with one line, when the
    cluster cannot run that many tasks at once (a barrier job would wait for them), and
    turns a failed run into :class:`NetsiftError` naming the error the processes raised.
    """
    if num_processes < 1:
        raise UsageError(f"num_processes must be at least 1, not {num_processes}")
    from pyspark.ml.torch.distributor import TorchDistributor

    found = _wait_for_slots(spark, num_processes, use_gpu)
    if use_gpu:
        problem = gpu_setup_problem(spark, found)
        if problem:
            raise UsageError(f"use_gpu: {problem}")
    slots = task_slots(spark, found, use_gpu)
    if slots < num_processes:
        kind = "GPU task slots" if use_gpu else "task slots (executor cores / spark.task.cpus)"
        raise UsageError(f"{num_processes} training processes need as many {kind}; "
                         f"{spark.sparkContext.master} has {slots}")
    with quiet_pandas_check():
        distributor = TorchDistributor(num_processes=num_processes, local_mode=False,
                                       use_gpu=use_gpu)
        # Its logger says INFO "Started/Finished distributed training" on stderr.
        distributor.logger.setLevel(logging.WARNING)
        try:
            return distributor.run(train, *args)
        except Exception as exc:  # Py4J, PythonException, RuntimeError: one line for all
            raise NetsiftError(f"distributed training failed: {failure_line(exc)}") from None


def _train_shard(scaled: np.ndarray, params: dict[str, Any], use_gpu: bool) -> dict[str, Any]:
    """The body of every training process: its shard of rows, trained under DDP."""
    import os
    import socket

    import torch
    import torch.distributed as dist

    from netsift.detect.autoencoder import train_autoencoder

    dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = "cpu"
        if use_gpu:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        shard = scaled[rank::world]
        weights = train_autoencoder(shard, params, device)
        ranks: list[Any] = [None] * world
        dist.all_gather_object(ranks, (rank, socket.gethostname(), device, len(shard)))
    finally:
        dist.destroy_process_group()
    return {"weights": weights, "ranks": ranks}


def fit_distributed(features, spark, num_processes: int = 2, use_gpu: bool = False, *,
                    feature_names: Sequence[str] | None = None,
                    **autoencoder_params: Any) -> AutoencoderDetector:
    """An :class:`AutoencoderDetector` trained by ``num_processes`` processes on ``spark``.

    ``features``: feature rows, as :meth:`Detector.fit <netsift.detect.base.Detector.fit>`
    takes them (``feature_names`` picks the columns); ``autoencoder_params``: the
    detector's constructor arguments (``device`` is where the driver scores; the processes
    use the CPU, or a GPU each with ``use_gpu``). The detector's ``training_ranks_`` lists
    a :class:`RankReport` per process. Each process needs at least one row.
    """
    detector = AutoencoderDetector(**autoencoder_params)  # validates the parameters
    params = detector.get_params()
    matrix, names = as_matrix(features, feature_names)
    scaling = Scaling.fit(matrix, names, detector._categorical_columns(names))
    scaled = scaling.transform(matrix)
    if scaled.shape[0] < num_processes:
        raise UsageError(f"{scaled.shape[0]} rows cannot be shared by {num_processes} "
                         f"training processes")
    started = time.perf_counter()
    result = run_distributed(spark, _train_shard, np.ascontiguousarray(scaled, np.float32),
                             params, use_gpu, num_processes=num_processes, use_gpu=use_gpu)
    fitted = AutoencoderDetector.from_weights(result["weights"], scaling, scaled, **params)
    fitted.training_ranks_ = tuple(RankReport(rank, host, device, rows)
                                   for rank, host, device, rows in result["ranks"])
    log.info("autoencoder detector: trained by %d processes on %s in %.1f s", num_processes,
             spark.sparkContext.master, time.perf_counter() - started)
    return fitted
