"""``netsift platform check``: the smoke test to run after deploying netsift on Spark.

It proves, stage by stage and printing each as it passes, that:

1. the master answers (a TCP connection within ``timeout``, so a wrong address fails at
   once instead of hanging) and accepts the application: Spark version, master URL;
2. executors register: their cores and the GPUs Spark gave them;
3. Python runs on every executor, with torch: a small probe job, one task per task slot,
   reports host, CPUs, Python, torch and its CUDA view, and the task's GPUs;
4. distributed training works: a small convolutional network (two 3x3 convolution
   layers and a linear layer) learns scikit-learn's handwritten digits (8x8 images, shipped
   with scikit-learn, so no download) with PyTorch DDP in ``processes`` processes, one Spark
   barrier job through TorchDistributor; each process reports its device, and the accuracy
   on held-out images must reach ``min_accuracy`` (0.9; a few epochs give about 0.97).

Executors need torch (not netsift: the probe and the training code travel with the job).
Every failure is a :class:`~netsift.errors.NetsiftError` of one line.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from netsift.detect import distributed
from netsift.errors import NetsiftError, UsageError
from netsift.platform import gpu
from netsift.platform.spark import failure_line

MIN_ACCURACY = 0.9


@dataclass
class CheckReport:
    """What the check found (see the module docstring for the stages)."""

    spark_version: str = ""
    master: str = ""
    executors: list[distributed.Executor] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""
    processes: list[dict[str, Any]] = field(default_factory=list)
    accuracy: float = float("nan")
    train_images: int = 0
    test_images: int = 0
    seconds: float = 0.0


def check_reachable(master: str, timeout: float) -> None:
    """Raise :class:`UsageError` unless a ``spark://`` or ``k8s://`` master accepts TCP."""
    if master.startswith("spark://"):
        ends = [(host, int(port) if port.isdigit() else -1) for host, _, port in
                (end.rpartition(":") for end in master[len("spark://"):].split(","))]
    elif master.startswith("k8s://"):
        url = urlsplit(master[len("k8s://"):] if "://" in master[6:] else
                       "https://" + master[len("k8s://"):])
        ends = [(url.hostname or "", url.port or (443 if url.scheme == "https" else 80))]
    else:
        return  # local[N] needs no network; yarn finds its resource manager itself
    problems = []
    for host, port in ends:
        if not host or port < 0:
            raise UsageError(f"bad Spark master URL {master!r}: expected spark://HOST:PORT")
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as exc:
            problems.append(f"{host}:{port}: {exc.strerror or exc}")
    raise UsageError(f"cannot reach the Spark master {master} ({'; '.join(problems)})")


def _session_conf(master: str, device: str, spark_preset: str | None) -> dict[str, str]:
    from netsift.platform.deploy import discovery_script_path, spark_conf

    conf = dict(spark_conf(spark_preset)) if spark_preset else {}
    if spark_preset == "gpu":
        conf["spark.task.resource.gpu.amount"] = "1"  # one whole GPU per process
    if master.startswith("local") and device != "cpu" and \
            gpu.resolve_device(device, "torch") == "cuda":
        # A local master's tasks take their GPUs from the driver's own resources.
        conf.update({"spark.driver.resource.gpu.amount": str(gpu.discover().torch_gpus),
                     "spark.driver.resource.gpu.discoveryScript": str(discovery_script_path()),
                     "spark.task.resource.gpu.amount": "1"})
    return conf


def _probe_function(import_torch: bool):
    """The probe task, defined here so cloudpickle ships it by value (no netsift needed).

    Without ``import_torch`` it only finds torch (importing it takes seconds per worker);
    with it, it also asks torch how many CUDA GPUs it sees.
    """

    def probe(_rows):
        import importlib.metadata
        import importlib.util
        import os
        import platform
        import socket

        from pyspark import TaskContext

        context = TaskContext.get()
        found = {"host": socket.gethostname(), "cpus": os.cpu_count(),
                 "python": platform.python_version(),
                 "gpus": tuple(context.resources()["gpu"].addresses)
                 if "gpu" in context.resources() else (),
                 # Standalone executors get their log URL, which names the executor.
                 "executor": os.environ.get("SPARK_LOG_URL_STDERR", "")
                 .partition("executorId=")[2].partition("&")[0]}
        if not import_torch:
            if importlib.util.find_spec("torch") is None:
                found["torch_error"] = "No module named 'torch'"
            else:
                found["torch"] = importlib.metadata.version("torch")
            yield found
            return
        try:
            import torch
        except ImportError as exc:
            found["torch_error"] = str(exc)
        else:
            found["torch"] = torch.__version__
            found["cuda_gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
        yield found

    return probe


def _digits_trainer():
    """The training process's body, defined here so cloudpickle ships it by value."""

    def train(train_images, train_labels, test_images, test_labels, epochs, use_gpu, seed):
        import math
        import os
        import socket
        import warnings

        import torch
        import torch.distributed as dist

        # The one-channel input layer's weight gradient has equivalent but different
        # strides from DDP's bucket (torch says: "not an error"); nothing to fix here.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        dist.init_process_group("nccl" if use_gpu else "gloo")
        try:
            rank, world = dist.get_rank(), dist.get_world_size()
            if use_gpu:
                device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
                torch.cuda.set_device(device)
            else:
                device = torch.device("cpu")
                torch.set_num_threads(1)  # the processes share the executor's cores
            torch.manual_seed(seed)
            network = torch.nn.Sequential(
                torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10)).to(device)
            # Gradients as views of DDP's buckets: no copy, and no stride warning for the
            # one-channel input layer.
            model = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if use_gpu else None,
                gradient_as_bucket_view=True)
            images = torch.from_numpy(train_images[rank::world]).to(device)
            labels = torch.from_numpy(train_labels[rank::world]).to(device)
            batch = 64
            # Every rank runs the same number of steps, or one waits on a collective.
            steps = torch.tensor([math.ceil(len(images) / batch)],
                                 device=device if use_gpu else "cpu")
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
            optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
            shuffle = torch.Generator().manual_seed(seed + rank)
            for _ in range(epochs):
                order = torch.randperm(len(images), generator=shuffle).to(device)
                for step in range(int(steps.item())):
                    pick = order[step * batch:(step + 1) * batch]
                    loss = torch.nn.functional.cross_entropy(model(images[pick]), labels[pick])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            network.eval()
            with torch.no_grad():
                test_x = torch.from_numpy(test_images[rank::world]).to(device)
                test_y = torch.from_numpy(test_labels[rank::world]).to(device)
                counts = torch.tensor([(network(test_x).argmax(1) == test_y).sum().item(),
                                       len(test_y)], dtype=torch.float64,
                                      device=device if use_gpu else "cpu")
            dist.all_reduce(counts)
            done = [None] * world
            name = torch.cuda.get_device_name(device) if use_gpu else "cpu"
            dist.all_gather_object(done, {"rank": rank, "host": socket.gethostname(),
                                          "device": str(device), "device_name": name,
                                          "images": len(images)})
        finally:
            dist.destroy_process_group()
        return {"accuracy": float(counts[0] / counts[1]), "processes": done}

    return train


def _digits(seed: int):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # pixels are 0..16
    return train_test_split(images, digits.target.astype(np.int64), test_size=0.25,
                            random_state=seed, stratify=digits.target)


def _executor_line(executor: distributed.Executor) -> str:
    gpus = ", ".join(executor.gpus) if executor.gpus else "none"
    return f"  executor {executor.id}: {executor.host}, {executor.cores} cores, GPUs: {gpus}"


def _probe_line(found: dict[str, Any]) -> str:
    who = f"executor {found['executor']} on {found['host']}" if found["executor"] \
        else found["host"]
    torch = f"torch missing ({found['torch_error']})" if "torch" not in found else \
        f"torch {found['torch']}" + (f", CUDA GPUs visible: {found['cuda_gpus']}"
                                     if "cuda_gpus" in found else "")
    gpus = ", ".join(found["gpus"]) if found["gpus"] else "none"
    return (f"  {who}: Python {found['python']}, {found['cpus']} CPUs, {torch}, "
            f"task GPUs: {gpus}")


def _choose_device(spark, found: list[distributed.Executor], device: str) -> tuple[bool, str]:
    """Whether the processes use GPUs, and the line that says so."""
    if device == "cpu":
        return False, "device: cpu (as requested)"
    problem = distributed.gpu_setup_problem(spark, found)
    if problem and device == "gpu":
        raise UsageError(f"device gpu: {problem}; use --device cpu or auto")
    if problem:
        return False, f"device: cpu (auto: {problem})"
    return True, f"device: gpu ({'as requested' if device == 'gpu' else 'auto'})"


def run_check(master: str | None = None, device: str = "auto", processes: int | None = None,
              epochs: int = 10, spark_preset: str | None = None, timeout: float = 60.0,
              min_accuracy: float = MIN_ACCURACY, seed: int = 0,
              on_line: Callable[[str], None] = print) -> CheckReport:
    """Run the check (module docstring) on ``master`` (default ``local[*]``).

    ``device``: ``auto`` (GPUs where every executor has one), ``cpu`` or ``gpu``;
    ``processes``: training processes (default one per executor, or per GPU task slot);
    ``spark_preset``: start the session with the ``cpu`` or ``gpu`` preset of
    :mod:`netsift.platform.deploy` (ignored when a session for ``master`` already runs);
    ``timeout``: seconds to wait for the master, then for executors. ``on_line`` gets
    each line of the report as it is found. Raises :class:`NetsiftError` (one line) on
    the first stage that fails, including an accuracy below ``min_accuracy``.
    """
    device = gpu.check_device(device)
    master = master or "local[*]"
    report = CheckReport(master=master)
    check_reachable(master, timeout)
    from netsift.platform.spark import get_session

    conf = _session_conf(master, device, spark_preset)
    try:
        spark = get_session(master, app_name="netsift-platform-check", conf=conf)
    except NetsiftError:
        raise
    except Exception as exc:  # the JVM's reasons arrive as Py4J errors of many kinds
        if "stopped SparkContext" in str(exc):
            # Spark gave up registering (3 x 20 s) and stopped the context it was building.
            raise NetsiftError(f"the Spark master {master} did not accept the application: "
                               f"something listens there, but no Spark master answered "
                               f"(wrong port?), or it refused the application") from None
        raise NetsiftError(f"cannot start a Spark application on {master}: "
                           f"{failure_line(exc)}") from None
    report.spark_version = spark.version
    on_line(f"spark {spark.version}, master {master}, application "
            f"{spark.sparkContext.applicationId}")

    report.executors = distributed.wait_for_executors(spark, 1, timeout)
    on_line(f"executors: {len(report.executors)}")
    for executor in report.executors:
        on_line(_executor_line(executor))
    use_gpu, line = _choose_device(spark, report.executors, device)
    report.device = "gpu" if use_gpu else "cpu"

    slots = distributed.task_slots(spark, report.executors, use_gpu)
    if slots < 1:
        raise NetsiftError(f"the executors of {master} offer no task slots")
    report.probes = _probe(spark, slots, use_gpu)
    for found in report.probes:
        on_line(_probe_line(found))
    missing = [f for f in report.probes if "torch" not in f]
    if missing:
        raise NetsiftError(f"torch is not importable on {missing[0]['host']} "
                           f"({missing[0]['torch_error']}): install it in the executors' "
                           f"Python (pip install 'netsift[torch]')")
    if use_gpu and not all(f["cuda_gpus"] for f in report.probes):
        raise NetsiftError("Spark gave the executors GPUs, but torch there sees no CUDA GPU "
                           "(a CPU-only torch build, or no NVIDIA driver in the container)")
    on_line(line)

    if processes is None:
        processes = min(slots, len(report.executors)) if not use_gpu else slots
    _train(spark, report, processes, use_gpu, epochs, seed, on_line)
    if not report.accuracy >= min_accuracy:
        raise NetsiftError(f"accuracy {report.accuracy:.3f} is below {min_accuracy}: "
                           f"training ran but did not learn")
    on_line("ok")
    return report


def _probe(spark, tasks: int, import_torch: bool) -> list[dict[str, Any]]:
    try:
        found = spark.sparkContext.parallelize(range(tasks), tasks) \
            .mapPartitions(_probe_function(import_torch)).collect()
    except Exception as exc:
        raise NetsiftError(f"the probe job failed on the executors: "
                           f"{failure_line(exc)}") from None
    distinct: dict[tuple, dict[str, Any]] = {}
    for one in found:  # one line per executor process, not per task
        key = (one["host"], one["executor"], one["gpus"])
        distinct.setdefault(key, one)
    return sorted(distinct.values(), key=lambda f: (f["host"], f["executor"], f["gpus"]))


def _train(spark, report: CheckReport, processes: int, use_gpu: bool, epochs: int,
           seed: int, on_line: Callable[[str], None]) -> None:
    train_images, test_images, train_labels, test_labels = _digits(seed)
    report.train_images, report.test_images = len(train_images), len(test_images)
    on_line(f"training: {processes} process(es), {epochs} epochs, {len(train_images)} "
            f"training and {len(test_images)} held-out digit images")
    started = time.perf_counter()
    result = distributed.run_distributed(
        spark, _digits_trainer(), train_images, train_labels, test_images, test_labels,
        epochs, use_gpu, seed, num_processes=processes, use_gpu=use_gpu)
    report.seconds = time.perf_counter() - started
    report.processes, report.accuracy = result["processes"], result["accuracy"]
    for process in report.processes:
        name = f" ({process['device_name']})" if process["device_name"] != "cpu" else ""
        on_line(f"  process {process['rank']} on {process['host']}: device "
                f"{process['device'].partition(':')[0]}{name}, {process['images']} images")
    on_line(f"accuracy: {report.accuracy:.3f} on {report.test_images} held-out images "
            f"({report.seconds:.1f} s)")
