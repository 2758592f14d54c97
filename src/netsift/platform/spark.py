"""Spark sessions, and a throwaway standalone cluster on 127.0.0.1 for tests and demos.

:func:`get_session` starts (or returns) the process's Spark session for a master URL:
``local[N]``, ``spark://host:port`` of an existing standalone cluster, ``yarn``, or
``k8s://...``. netsift's Spark jobs use the DataFrame API only (no Python UDFs), so
executors never start Python workers and need no netsift installation.

:class:`LocalCluster` starts a real standalone master and workers with the launch
script shipped in the pyspark package (``pyspark/bin/spark-class``), on loopback, with
ports the JVMs pick themselves (read back from their logs, so no race for a free port),
and stops them all, with their executors, when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from netsift.errors import NetsiftError, StorageError, UsageError

LOOPBACK = "127.0.0.1"
# Cheap start-up and small jobs: no web UI, no progress bar, few shuffle partitions.
DEFAULT_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.session.timeZone": "UTC",
}


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark package."""
    try:
        import pyspark
    except ImportError:
        raise UsageError("the Spark engine needs pyspark: pip install 'netsift[spark]'") \
            from None
    return Path(pyspark.__file__).resolve().parent


def get_session(master: str | None = None, app_name: str = "netsift",
                conf: dict[str, str] | None = None, preset: str | None = None):
    """A SparkSession for ``master`` (default ``local[*]``) with netsift's defaults.

    One session exists per process: a session already running for another master is
    stopped first. ``preset`` ("gpu" or "cpu": netsift.platform.deploy.spark_conf) and
    then ``conf`` override the defaults. Under ``spark-submit`` (or the pyspark shell)
    with no ``master`` given, the submitted master and settings win: netsift's defaults
    fill in only what was not set.
    """
    spark_home()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    submitted = master is None and "PYSPARK_GATEWAY_PORT" in os.environ
    master = master or "local[*]"
    active = SparkSession.getActiveSession()
    if active is not None:
        if submitted or active.sparkContext.master == master:
            return active
        active.stop()
    settings = dict(DEFAULT_CONF)
    if preset:
        from netsift.platform.deploy import spark_conf

        settings.update(spark_conf(preset))
    settings.update(conf or {})
    if submitted:
        with quiet_pandas_check():
            session = SparkSession.builder.appName(app_name).getOrCreate()
        given = session.sparkContext.getConf()
        for key, value in settings.items():
            if not given.contains(key) and key.startswith("spark.sql."):
                session.conf.set(key, value)  # runtime settings only; the rest is fixed
        session.sparkContext.setLogLevel("ERROR")
        return session
    if master.startswith("local") or LOOPBACK in master:
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        settings.update({"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK})
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    with quiet_pandas_check():
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    _quiet_task_failures(session)
    return session


# Loggers that print a failed task's Java stack trace to the driver's console (in local
# mode the executors run in the driver's JVM). The failure reaches the caller anyway,
# as one line (:func:`job_errors`), so sessions netsift starts turn them off; executors
# of a cluster keep logging to their own logs.
_TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor",
                         "org.apache.spark.scheduler.TaskSetManager",
                         "org.apache.spark.util.Utils",
                         "org.apache.spark.sql.execution.datasources.FileFormatWriter")


def _quiet_task_failures(session) -> None:
    from py4j.protocol import Py4JError

    jvm = session.sparkContext._jvm
    try:
        off = jvm.org.apache.logging.log4j.Level.OFF
        for name in _TASK_FAILURE_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, off)
    except Py4JError:  # a Spark without log4j 2 (before 3.3): its console stays as it is
        pass


# "SomeError: message", "java.lang.SomeException: message", ": java...." (Py4J's form),
# "Caused by: java...." (a Java stack trace's causes, the innermost last).
_ERROR_LINE = re.compile(r"^[\s:]*(?:Caused by: )?(?:[\w.$]+\.)?(\w*(?:Error|Exception)): (.+)$",
                         re.MULTILINE)
_UNREADABLE = re.compile(r"FAILED_READ_FILE\.\w+\] Encountered error while reading file "
                         r"(\S+?)\.?(?:\s|$)")


def failure_line(exc: BaseException) -> str:
    """The innermost ``SomeError: message`` line of a (Spark-wrapped) failure."""
    text = str(exc)
    matches = [m for m in _ERROR_LINE.finditer(text)
               if m.group(1) not in ("Py4JJavaError", "PythonException", "SparkException")]
    if matches:
        name, message = matches[-1].groups()
        return f"{name}: {message.strip()}"[:500]
    first = text.strip().splitlines()
    return (first[0] if first else type(exc).__name__)[:500]


@contextlib.contextmanager
def job_errors(what: str) -> Iterator[None]:
    """A failed Spark job as one line: :class:`StorageError` naming a file Spark could
    not read (a damaged Parquet file), else :class:`NetsiftError` ("WHAT failed: ...")."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as exc:
        unreadable = _UNREADABLE.search(str(exc))
        if unreadable:
            from urllib.parse import unquote, urlparse

            location = unreadable.group(1)
            path = unquote(urlparse(location).path) if location.startswith("file:") \
                else location
            raise StorageError(f"{path}: cannot read packets ({failure_line(exc)})") \
                from None
        raise NetsiftError(f"{what} failed: {failure_line(exc)}") from None


@contextlib.contextmanager
def quiet_pandas_check() -> Iterator[None]:
    """Silence pyspark's warning that pandas is newer than it knows (pandas 3).

    pyspark checks the pandas version when a session starts and again on Arrow
    collection and ``mapInArrow``; netsift hands pyspark no pandas data.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas",
                                category=FutureWarning)
        yield


class ClusterError(RuntimeError):
    """The local standalone cluster did not come up."""


class LocalCluster:
    """A Spark standalone master and ``workers`` workers on 127.0.0.1, for the ``with`` block.

    >>> with LocalCluster(cores=1, memory="1g") as cluster:   # doctest: +SKIP
    ...     spark = get_session(cluster.master_url)

    ``cores`` and ``memory`` bound what each worker offers executors (each worker JVM
    runs its own executor per application). Logs are kept in ``log_dir`` (a temporary
    directory by default) and quoted when start-up fails.
    """

    def __init__(self, cores: int = 1, memory: str = "2g", timeout: float = 90.0,
                 log_dir: str | os.PathLike | None = None, workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.cores, self.memory, self.timeout = cores, memory, timeout
        self.workers = workers
        self._own_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="netsift-spark-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.master_url: str = ""
        self._procs: list[subprocess.Popen] = []

    def _launch(self, name: str, cls: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.log_dir / f"{name}.log"
        env = dict(os.environ, SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=LOOPBACK,
                   SPARK_LOG_DIR=str(self.log_dir), SPARK_DAEMON_MEMORY="512m",
                   SPARK_WORKER_DIR=str(self.log_dir / "work"),
                   # The REST submission server listens on fixed port 6066: not needed.
                   SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
                   PYSPARK_PYTHON=sys.executable)
        script = spark_home() / "bin" / "spark-class"
        with open(log, "wb") as out:
            # A session of its own, so stop() can signal the JVM and anything it forked.
            proc = subprocess.Popen(["bash", str(script), cls, *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self._procs.append(proc)
        return proc, log

    def _wait_for(self, proc: subprocess.Popen, log: Path, pattern: str, what: str) -> str:
        deadline = time.monotonic() + self.timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            match = regex.search(text)
            if match:
                return match.group(1) if regex.groups else match.group(0)
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = (log.read_text(errors="replace") if log.exists() else "")[-2000:]
        raise ClusterError(f"Spark {what} did not start within {self.timeout:.0f} s "
                           f"(exit {proc.poll()}); log {log}:\n{tail}")

    def start(self) -> LocalCluster:
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise ClusterError("Spark needs Java 17 or 21 (java not on PATH, JAVA_HOME unset)")
        try:
            master, log = self._launch(
                "master", "org.apache.spark.deploy.master.Master",
                "--host", LOOPBACK, "--port", "0", "--webui-port", "0")
            self.master_url = self._wait_for(
                master, log, r"Starting Spark master at (spark://[\d.]+:\d+)", "master")
            # Started together, awaited in turn: the JVMs start up in parallel.
            started = [self._launch(
                "worker" if i == 0 else f"worker-{i + 1}",
                "org.apache.spark.deploy.worker.Worker",
                "--host", LOOPBACK, "--port", "0", "--webui-port", "0",
                "--cores", str(self.cores), "--memory", self.memory,
                "--work-dir", str(self.log_dir / "work"), self.master_url)
                for i in range(self.workers)]
            for worker, log in started:
                self._wait_for(worker, log, r"Successfully registered with master", "worker")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop worker then master (SIGTERM, then SIGKILL after 10 s), by process group."""
        for proc in reversed(self._procs):
            _stop_group(proc)
        self._procs.clear()
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in process group ``pgid``.

    Orphaned members that have exited stay zombies until PID 1 reaps them, which in a
    container can take a while; they no longer run, so they do not count.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL what is left after ``grace``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, so only live members keep the group alive
        if not group_alive(proc.pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    proc.wait()
