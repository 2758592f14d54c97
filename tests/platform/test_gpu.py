"""GPU discovery, the device choice, and the feature query on the Polars GPU engine.

Most of it runs on any machine: discovery is replaced by a fake where a test needs a GPU
to be there (or not), and whether cudf-polars can run the feature query is read from the
query plan. The test marked ``gpu`` runs the query on a real GPU.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

import netsift
from netsift.errors import UsageError
from netsift.features import polars_engine as pe
from netsift.features import spec as fs
from netsift.platform import gpu

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "lan.pcap.gz"
NO_GPU = gpu.Discovery(gpus=(), nvidia_smi_reason="no nvidia-smi on PATH (no NVIDIA driver)",
                       torch_version="2.13.0+cpu", torch_cuda=None, torch_gpus=0,
                       torch_reason="torch 2.13.0+cpu is a CPU-only build",
                       cudf_polars=None,
                       cudf_polars_reason="cudf-polars is not installed (pip install "
                                          "'netsift[gpu]')")
ONE_GPU = gpu.Discovery(gpus=("NVIDIA H200",), nvidia_smi_reason="", torch_version="2.13.0",
                        torch_cuda="13.0", torch_gpus=1, torch_reason="",
                        cudf_polars="26.10.2", cudf_polars_reason="")
# What would keep the feature query off cudf-polars if addresses reached it as 16-byte
# binary values: the engine splits them into uint64 halves on the CPU first (prepare()),
# and only a frame given with binary addresses is split by these expressions.
ADDRESS_BLOCKERS = {".bin.", ".arr."}


@pytest.fixture
def machine(monkeypatch):
    """Set what discovery finds: ``machine(NO_GPU)`` or ``machine(ONE_GPU)``."""
    gpu.clear_cache()
    monkeypatch.setattr(gpu, "_said", set())

    def use(found: gpu.Discovery) -> None:
        monkeypatch.setattr(gpu, "discover", lambda purpose=None: found)
    yield use
    gpu.clear_cache()


@pytest.fixture(scope="module")
def packets():
    return netsift.read_table(SAMPLE)


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "netsift.platform"]


def test_cpu_never_looks_for_a_gpu(monkeypatch):
    monkeypatch.setattr(gpu, "discover", lambda *_: pytest.fail("discovery ran"))
    assert gpu.resolve_device("cpu", "torch") == gpu.resolve_device("cpu", "polars") == "cpu"


@pytest.mark.parametrize("purpose", gpu.PURPOSES)
def test_auto_without_a_gpu_uses_the_cpu_and_says_so_once(machine, caplog, purpose):
    machine(NO_GPU)
    caplog.set_level(logging.INFO, logger="netsift.platform")
    assert [gpu.resolve_device("auto", purpose) for _ in range(3)] == ["cpu"] * 3
    messages = _messages(caplog)
    assert len(messages) == 1, messages
    assert messages[0].startswith("device auto: ") and "runs on the CPU: " in messages[0]
    assert NO_GPU.reason(purpose) in messages[0]


@pytest.mark.parametrize(("purpose", "reason"), [
    ("torch", "torch 2.13.0+cpu is a CPU-only build"),
    ("polars", "cudf-polars is not installed (pip install 'netsift[gpu]')")])
def test_gpu_without_a_gpu_is_one_line_saying_why(machine, purpose, reason):
    machine(NO_GPU)
    with pytest.raises(UsageError) as error:
        gpu.resolve_device("gpu", purpose)
    assert str(error.value) == f"device gpu: {reason}; use device cpu or auto"


def test_cudf_polars_without_a_gpu_says_there_is_no_gpu(machine):
    machine(replace(NO_GPU, cudf_polars="26.10.2", cudf_polars_reason=""))
    with pytest.raises(UsageError, match=r"device gpu: no nvidia-smi on PATH"):
        gpu.resolve_device("gpu", "polars")


@pytest.mark.parametrize("requested", ["auto", "gpu", "cuda"])
def test_a_usable_gpu_is_chosen(machine, requested):
    machine(ONE_GPU)
    assert gpu.resolve_device(requested, "torch") == gpu.resolve_device(requested,
                                                                        "polars") == "cuda"


def test_polars_without_cudf_polars_asks_neither_torch_nor_nvidia_smi(monkeypatch):
    """Every feature run resolves device auto: importing torch alone took a second."""
    gpu.clear_cache()
    monkeypatch.setattr(gpu, "_said", set())
    monkeypatch.setattr(gpu, "_cudf_polars_status", lambda: (None, NO_GPU.cudf_polars_reason))
    monkeypatch.setattr(gpu, "_torch_status", lambda: pytest.fail("torch was asked"))
    monkeypatch.setattr(gpu, "nvidia_smi", lambda: pytest.fail("nvidia-smi was asked"))
    assert gpu.resolve_device("auto", "polars") == "cpu"
    with pytest.raises(UsageError, match=r"device gpu: cudf-polars is not installed"):
        gpu.resolve_device("gpu", "polars")


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="device must be auto, cpu or gpu, not 'tpu'"):
        gpu.resolve_device("tpu")


def test_collect_engines():
    assert gpu.polars_engine_for("cpu") == "streaming"
    engine = gpu.polars_engine_for("cuda:1")
    assert isinstance(engine, pl.GPUEngine)
    assert engine.config["raise_on_fail"] is True  # never a silent CPU fallback
    assert engine.device == 1


def test_discovery_of_this_machine_is_consistent():
    gpu.clear_cache()
    found = gpu.discover()
    assert [line.split(":")[0] for line in found.lines()] == ["nvidia-smi", "torch",
                                                               "cudf-polars"]
    torch = pytest.importorskip("torch")
    assert bool(found.torch_reason) == (not torch.cuda.is_available())
    assert (found.cudf_polars is None) == (importlib.util.find_spec("cudf_polars") is None)


def test_plan_check_names_what_cudf_polars_cannot_run():
    frame = pl.LazyFrame({"key": [1, 1, 2], "value": [3, 3, 4]})
    clean = frame.group_by("key").agg(
        pl.len().alias("count"), pl.col("value").sum().alias("sum"),
        pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"),
        pl.col("value").n_unique().alias("distinct"),
        (pl.col("value") * 2).max().alias("packed"))
    assert gpu.polars_gpu_blockers(clean, frame.collect_schema()) == {}
    with_mode = frame.group_by("key").agg(pl.col("value").mode().first())
    assert set(gpu.polars_gpu_blockers(with_mode)) == {".mode()"}
    with_udf = frame.select(pl.col("value").map_batches(lambda values: values,
                                                        return_dtype=pl.Int64))
    assert set(gpu.polars_gpu_blockers(with_udf)) == {".python_udf()"}
    assert set(gpu.polars_gpu_blockers(frame, {"addr": pl.Binary, "n": pl.Int64})) == \
        {"Binary column addr"}


@pytest.mark.parametrize("spec", [fs.FeatureSpec(), fs.FeatureSpec(validated_only=True),
                                  fs.FeatureSpec(window_ns=10**9, node="dst")],
                         ids=["default", "validated", "dst-1s"])
@pytest.mark.parametrize("ipv4_key", [False, True], ids=["three-column-key", "ipv4-key"])
def test_feature_query_is_gpu_ready(packets, spec, ipv4_key):
    """No mode, no UDF, no binary column, nothing else cudf-polars refuses."""
    bounds = (0, 4) if ipv4_key else (None, None)
    prepared = pe.prepare(packets, spec.input_columns()).lazy()
    query = pe.compute(prepared, spec, *bounds)
    assert gpu.polars_gpu_blockers(query, prepared.collect_schema()) == {}
    # The same query over binary addresses splits them in Polars: CPU only.
    raw = pl.from_arrow(packets).lazy()
    inputs = raw.select(spec.input_columns()).collect_schema()
    addresses = {f"Binary column {name}" for name in ("src", "dst") if name in inputs}
    assert set(gpu.polars_gpu_blockers(pe.compute(raw, spec, *bounds), inputs)) == \
        ADDRESS_BLOCKERS | addresses


def test_engine_gpu_on_this_kind_of_machine_is_one_line(machine, packets):
    machine(NO_GPU)
    with pytest.raises(UsageError) as error:
        pe.collect(packets, device="gpu")
    assert str(error.value) == ("device gpu: cudf-polars is not installed (pip install "
                                "'netsift[gpu]'); use device cpu or auto")


def test_engine_gpu_where_cudf_polars_runs_picks_the_gpu_engine(machine):
    machine(ONE_GPU)
    for device in ("gpu", "auto"):
        engine = pe._device_engine(pe.KERNEL, fs.FeatureSpec(), device)
        assert isinstance(engine, pl.GPUEngine)


def test_engine_auto_runs_on_the_cpu_and_says_why_once(machine, packets, caplog):
    machine(NO_GPU)
    caplog.set_level(logging.INFO, logger="netsift.platform")
    for engine in (pe.KERNEL, "streaming"):
        assert pe.collect(packets, engine=engine, device="auto").equals(
            pe.collect(packets, engine=engine))
    messages = _messages(caplog)
    assert len(messages) == 1, messages
    assert "the Polars engine runs on the CPU" in messages[0]


@pytest.mark.gpu
def test_feature_query_on_the_gpu_engine_equals_the_cpu(packets):
    if importlib.util.find_spec("cudf_polars") is None:
        pytest.skip("cudf-polars is not installed (pip install 'netsift[gpu]')")
    gpu.clear_cache()
    if gpu.discover().reason("polars"):
        pytest.skip(gpu.discover().reason("polars"))
    spec = fs.FeatureSpec()
    on_gpu = pe.collect(packets, spec, engine=pl.GPUEngine(raise_on_fail=True))
    on_cpu = pe.collect(packets, spec)
    assert on_gpu.schema == on_cpu.schema and on_gpu.num_rows == on_cpu.num_rows
    for name in on_cpu.column_names:
        for got, want in zip(on_gpu.column(name).to_pylist(), on_cpu.column(name).to_pylist(),
                             strict=True):
            assert got == want or (isinstance(want, float) and got is not None
                                   and math.isclose(got, want, rel_tol=1e-9)), name
