"""``netsift features``: the command, its output directory, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from feature_reference import assert_same

import netsift.features as nf
from netsift.cli import main
from netsift.errors import UsageError


def netsift(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netsift.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def errors(proc: subprocess.CompletedProcess) -> str:
    """stderr without the one-time note of where --device auto ran the engine."""
    return "\n".join(line for line in proc.stderr.splitlines()
                     if not line.startswith("netsift: device auto: "))


def test_features_command_writes_a_table(lan_dataset, tmp_path):
    out = tmp_path / "features"
    proc = netsift("features", str(lan_dataset), "--out", str(out), "--window", "10s",
                   "--node", "dst")
    assert proc.returncode == 0, proc.stderr
    # At most the one-time note of where --device auto ran the engine.
    notes = proc.stderr.splitlines()
    assert len(notes) <= 1 and all(n.startswith("netsift: device auto: ") for n in notes)
    assert "node-windows from 2,251 packets" in proc.stdout and "polars" in proc.stdout
    spec = nf.FeatureSpec(window_ns=10 * 10**9, node="dst")
    assert json.loads((out / "_spec.json").read_text()) == spec.to_json()
    assert nf.read_features(out).equals(nf.compute_features(lan_dataset, spec))


def test_rerun_replaces_the_table(lan_dataset, tmp_path):
    out = tmp_path / "features"
    first = nf.write_features(lan_dataset, out, nf.FeatureSpec(window_ns=10**9))
    second = nf.write_features(lan_dataset, out, nf.FeatureSpec(validated_only=True))
    assert first.rows > second.rows == 2
    assert nf.read_features(out).num_rows == 2
    assert sorted(p.name for p in out.iterdir()) == ["_spec.json", "part-00000-0000.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args, status, message", [
    (["--window", "fast"], 2, "bad duration 'fast'"),
    (["--node", "both"], 2, "invalid choice: 'both'"),
    (["--engine", "duckdb"], 2, "invalid choice: 'duckdb'"),
    (["--master", "local[1]"], 1, "netsift: error: --master needs --engine spark"),
    (["--compression", "lz4"], 2, "invalid choice: 'lz4'"),
])
def test_bad_options(lan_dataset, tmp_path, args, status, message):
    proc = netsift("features", str(lan_dataset), "--out", str(tmp_path / "f"), *args)
    assert proc.returncode == status
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "f").exists()


def test_output_inside_the_packet_dataset_is_refused(lan_dataset, tmp_path, capsys):
    """A feature table inside the dataset would be read as packets by the next run."""
    packets = tmp_path / "packets"
    shutil.copytree(lan_dataset, packets)
    for out, where in [(packets / "features", "is inside"), (packets, "is")]:
        assert main(["features", str(packets), "--out", str(out)]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == f"netsift: error: --out {out} {where} the packet dataset " \
                        f"{packets}: choose a directory outside it"
    assert not (packets / "features").exists()
    assert sorted(p.name for p in packets.iterdir()) == \
        sorted(p.name for p in lan_dataset.iterdir())


def test_foreign_output_directory_is_kept(lan_dataset, tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    proc = netsift("features", str(lan_dataset), "--out", str(out))
    assert proc.returncode == 1
    error = errors(proc)
    assert error.startswith("netsift: error: ") and "not a feature table" in error
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_missing_input(tmp_path):
    proc = netsift("features", str(tmp_path / "nothing"), "--out", str(tmp_path / "f"))
    assert proc.returncode == 1
    assert errors(proc) == f"netsift: error: {tmp_path / 'nothing'}: no such packet " \
                           "dataset or Parquet file"


def test_a_killed_runs_leftovers_are_undone_by_the_next_run(lan_dataset, tmp_path, capsys,
                                                            dead_pid):
    """A killed run leaves its partial table (``.OUT.tmp-HOST-PID-*``) and, killed between
    its two renames, the previous table set aside (``.OUT.old-...``). The next run for
    the same --out removes the first and puts the second back, for dead processes of
    this host only, before it computes anything (so even a run that then fails)."""
    out = tmp_path / "features"
    assert main(["features", str(lan_dataset), "--out", str(out), "-q"]) == 0
    before = nf.read_features(out)
    dead = dead_pid
    host = socket.gethostname()
    set_aside = tmp_path / f".features.old-{host}-{dead}-0badf00d"
    os.replace(out, set_aside)
    partial = tmp_path / f".features.tmp-{host}-{dead}-0badf00d"
    running = tmp_path / f".features.tmp-{host}-{os.getpid()}-00c0ffee"
    elsewhere = tmp_path / f".features.tmp-other-host-{dead}-0ddba11"
    for scratch in (partial, running, elsewhere):
        scratch.mkdir()
        (scratch / "part-00000-0000.parquet").write_bytes(b"half a file")
    assert main(["features", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "no such packet dataset" in capsys.readouterr().err
    assert not partial.exists() and not set_aside.exists()
    assert running.exists() and elsewhere.exists()
    assert nf.read_features(out).equals(before)


@pytest.mark.parametrize(("engine", "damage"), [
    ("polars", "truncated"), ("polars", "corrupt pages"),
    pytest.param("spark", "corrupt pages", marks=pytest.mark.spark)])
def test_damaged_packet_file_is_one_line_naming_it(lan_dataset, tmp_path, engine, damage):
    """Spark (local mode: its executor is the driver's JVM) would print the failed
    task's Java stack trace and raise a Py4J error; the command says one line."""
    packets = tmp_path / "packets"
    shutil.copytree(lan_dataset, packets)
    victim = sorted(packets.glob("date=*/hour=*/*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:  # the footer intact, the column chunks scrambled
        for i in range(4, len(data) - 4096, 7):
            data[i] ^= 0x5A
    victim.write_bytes(bytes(data))
    proc = netsift("features", str(packets), "--out", str(tmp_path / "f"), "--engine", engine)
    assert proc.returncode == 1
    error = [line for line in errors(proc).splitlines() if line.startswith("netsift")]
    assert len(error) == 1 and error[0].startswith(f"netsift: error: {victim}: cannot read "
                                                   "packets (")
    assert "Traceback" not in proc.stderr and "\tat org.apache" not in proc.stderr
    if engine == "spark":  # what remains is Spark's start-up notes
        assert all(" ERROR " not in line for line in proc.stderr.splitlines())
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("engine", ["polars", pytest.param("spark", marks=pytest.mark.spark)])
def test_parquet_that_is_not_packets_is_refused_in_one_line(lan_dataset, tmp_path, capsys,
                                                            request, engine):
    """A feature table given as packets (no packet columns), and packets whose ``ts``
    is text: the embedded engine raised a TypeError on the text, Spark cast it."""
    packets = pq.read_table(sorted(lan_dataset.glob("date=*/hour=*/*.parquet"))[0])
    text_times = tmp_path / "text-times.parquet"
    pq.write_table(packets.set_column(0, "ts", packets.column("ts").cast("string")),
                   text_times)
    features = tmp_path / "features"
    assert main(["features", str(lan_dataset), "--out", str(features), "-q"]) == 0
    options = ["--engine", engine]
    if engine == "spark":
        options += ["--master", request.getfixturevalue("spark_cluster").master_url]
        request.getfixturevalue("spark")
    capsys.readouterr()
    for source, message in [(text_times, "column ts is string, not int64"),
                            (features, "no column ts")]:
        assert main(["features", str(source), "--out", str(tmp_path / "f"), *options]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("netsift: error: ") and str(source) in error, error
        assert f"not a packet table ({message}" in error, error
    assert not (tmp_path / "f").exists()


@pytest.mark.spark
def test_spark_engine_errors_on_missing_input_as_the_embedded_engine_does(tmp_path, spark,
                                                                          spark_cluster,
                                                                          capsys):
    (tmp_path / "empty").mkdir()
    for source, message in [(tmp_path / "nothing", f"{tmp_path / 'nothing'}: no such packet "
                                                    "dataset or Parquet file"),
                            (tmp_path / "empty", f"no Parquet packet files in "
                                                  f"{tmp_path / 'empty'}")]:
        status = main(["features", str(source), "--out", str(tmp_path / "f"),
                       "--engine", "spark", "--master", spark_cluster.master_url])
        assert status == 1
        assert capsys.readouterr().err.strip() == f"netsift: error: {message}"


@pytest.mark.spark
def test_spark_engine_on_the_cluster_from_the_command_line(lan_dataset, tmp_path, spark,
                                                           spark_cluster, capsys):
    # In process: the command finds the test session already connected to this master
    # (a second driver JVM would double the time of this test).
    out = tmp_path / "features"
    status = main(["features", str(lan_dataset), "--out", str(out), "--engine", "spark",
                   "--master", spark_cluster.master_url, "--validated-only",
                   "--compression", "none"])
    assert status == 0
    assert "node-windows from 108 packets" in capsys.readouterr().out
    metadata = pq.ParquetFile(next(out.glob("part-*.parquet"))).metadata
    assert metadata.row_group(0).column(0).compression == "UNCOMPRESSED"
    spec = nf.FeatureSpec(validated_only=True)
    assert json.loads((out / "_spec.json").read_text()) == spec.to_json()
    assert_same(nf.read_features(out), nf.compute_features(lan_dataset, spec).to_pylist())


@pytest.mark.spark
def test_spark_reads_the_embedded_engines_table(lan_dataset, tmp_path, spark):
    """The embedded engine's encodings (delta byte arrays, byte stream split, non-null
    columns) are ones Spark's Parquet reader takes: the rows come back the same."""
    out = tmp_path / "features"
    assert main(["features", str(lan_dataset), "--out", str(out)]) == 0
    written = nf.read_features(out)
    rows = spark.read.parquet(str(out)).orderBy("window_start", "node").collect()
    assert [bytes(r["node"]) for r in rows] == written.column("node").to_pylist()
    for name in ("packets", "length_mean", "length_std", "dport_mode"):
        assert [r[name] for r in rows] == written.column(name).to_pylist(), name


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_compression_option_writes_the_same_rows_with_that_codec(lan_dataset, tmp_path,
                                                                 codec):
    assert main(["features", str(lan_dataset), "--out", str(tmp_path / "z"), "-q"]) == 0
    out = tmp_path / codec
    assert main(["features", str(lan_dataset), "--out", str(out), "--compression", codec,
                 "-q"]) == 0
    metadata = pq.ParquetFile(next(out.glob("part-*.parquet"))).metadata
    codecs = {metadata.row_group(0).column(i).compression
              for i in range(metadata.num_columns)}
    assert codecs == {"UNCOMPRESSED" if codec == "none" else codec.upper()}
    assert nf.read_features(out).equals(nf.read_features(tmp_path / "z"))
    with pytest.raises(UsageError, match="unknown compression 'lz5'"):
        nf.write_features(lan_dataset, tmp_path / "bad", compression="lz5")
