"""Distributed autoencoder training on a real standalone cluster: TorchDistributor, 2 ranks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from netsift.errors import UsageError

pytest.importorskip("torch")
pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java (no java on PATH)")
    from netsift.platform.spark import LocalCluster, get_session

    # Two cores: the barrier job runs both training processes at once.
    with LocalCluster(cores=2, memory="2g",
                      log_dir=tmp_path_factory.mktemp("spark-distributed")) as cluster:
        session = get_session(cluster.master_url, app_name="netsift-test-distributed",
                              conf={"spark.executor.memory": "1g"})
        yield session
        session.stop()


@pytest.mark.spark
def test_two_processes_train_a_model_that_finds_the_planted_rows(spark, planted):
    from netsift.detect.distributed import fit_distributed

    model = fit_distributed(planted.rows, spark, num_processes=2, epochs=40, seed=3,
                            device="cpu")
    ranks = model.training_ranks_  # in rank order
    assert [r.rank for r in ranks] == [0, 1]
    # Rows are dealt out in turn: both ranks trained, on every row between them.
    assert [r.rows for r in ranks] == [300, 300]
    assert {r.device for r in ranks} == {"cpu"}
    scores = model.score(planted.rows)
    assert roc_auc_score(planted.is_anomaly, scores) >= 0.95
    assert np.median(scores[planted.is_anomaly]) > 0.5 > np.median(scores[~planted.is_anomaly])


@pytest.mark.spark
def test_more_processes_than_task_slots_fail_at_once(spark, planted):
    from netsift.detect.distributed import fit_distributed

    with pytest.raises(UsageError, match="3 training processes need as many task slots"):
        fit_distributed(planted.rows, spark, num_processes=3, epochs=1)


@pytest.mark.spark
def test_gpu_processes_without_executor_gpus_fail_at_once(spark, planted):
    from netsift.detect.distributed import fit_distributed

    with pytest.raises(UsageError, match=r"use_gpu: executor\(s\) 0 have no GPUs"):
        fit_distributed(planted.rows, spark, num_processes=2, use_gpu=True, epochs=1)


def test_a_failure_on_the_executors_comes_back_as_its_innermost_error_line():
    from netsift.platform.spark import failure_line

    # The shape of a failed TorchDistributor run: Spark's wrapper around the task's error,
    # which quotes the tail of torchrun's output.
    wrapped = ("An error occurred while calling o123.collectToPython.\n"
               ": org.apache.spark.SparkException: Job aborted due to stage failure: ...\n"
               "pyspark.errors.exceptions.base.PythonException: \n"
               "  An exception was thrown from the Python worker.\n"
               "RuntimeError: Command ['python', '-m', 'pyspark.ml.torch.torch_run_process_"
               "wrapper'] failed with return code 1. The task output is included below:\n"
               "Traceback (most recent call last):\n"
               '  File "train.py", line 8, in <module>\n'
               "torch.distributed.DistBackendError: NCCL error in: init.cpp:88, no GPU\n")
    assert failure_line(RuntimeError(wrapped)) == \
        "DistBackendError: NCCL error in: init.cpp:88, no GPU"
    assert failure_line(ValueError("one line, no error name")) == "one line, no error name"
    # A Java failure through Py4J: the innermost of its causes.
    java = ("An error occurred while calling o53.collectToPython.\n"
            ": org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT] Encountered error "
            "while reading file file:///data/a.parquet.  SQLSTATE: KD001\n"
            "\tat org.apache.spark.sql.errors.QueryExecutionErrors$.cannotReadFilesError\n"
            "Caused by: org.apache.parquet.io.ParquetDecodingException: could not decompress\n"
            "Caused by: com.github.luben.zstd.ZstdIOException: Data corruption detected\n"
            "\t... 39 more\n")
    assert failure_line(RuntimeError(java)) == "ZstdIOException: Data corruption detected"
