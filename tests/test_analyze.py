"""The main job end to end: `netsift analyze` and `netsift evaluate`, on the bundled lab
capture and on a fresh one made by real tools (nmap, hping3, curl, dig) in network
namespaces, with the report rendered by a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import netsift.features as nf
from netsift import lab as netlab_cli
from netsift.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "lab"
ALERT_KEYS = {"window_start", "window_end", "window_start_ns", "node", "score", "detector",
              "model", "top_features"}
TARGET_AP = 0.95


def netsift(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netsift.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def attackers(labels_path: Path) -> dict[str, str]:
    labels = json.loads(labels_path.read_text())
    return {a["attacker"]: a["kind"] for a in labels["attacks"]}


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "run"
    proc = netsift("analyze", str(SAMPLE / "capture.pcap.xz"), "--out", str(out),
                   "--window", "10s")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"[\d,]+ packets, [\d,]+ host-windows, [\d,]+ alerts \(iforest\)",
                     proc.stdout), proc.stdout
    assert f"report: {out / 'report.html'}" in proc.stdout
    return out


def test_analyze_writes_every_output(analyzed):
    features = pq.read_table(analyzed / "features.parquet")
    scores = pq.read_table(analyzed / "scores.parquet")
    assert features.num_rows == scores.num_rows > 100
    assert sorted(scores.column("rank").to_pylist()) == list(range(1, scores.num_rows + 1))
    assert (analyzed / "model.npz").stat().st_size > 0
    assert (analyzed / "packets" / "_manifest.json").exists()
    assert not [p.name for p in analyzed.iterdir() if p.name.startswith(".")]  # no scratch
    alerts = [json.loads(line) for line in (analyzed / "alerts.jsonl").read_text().splitlines()]
    assert alerts, "no alerts"
    flagged = sum(scores.column("alert").to_pylist())
    assert len(alerts) == flagged
    for alert in alerts:
        assert set(alert) == ALERT_KEYS
        assert alert["score"] >= 0.5 and alert["detector"] == "iforest"
        assert len(alert["top_features"]) == 3
        for reason in alert["top_features"]:
            assert set(reason) == {"feature", "value", "typical", "weight"}
    scores_out = [a["score"] for a in alerts]
    assert scores_out == sorted(scores_out, reverse=True)


def test_every_attacker_raises_an_alert(analyzed):
    alerted = {json.loads(line)["node"] for line in
               (analyzed / "alerts.jsonl").read_text().splitlines()}
    missing = {ip: kind for ip, kind in attackers(SAMPLE / "labels.json").items()
               if ip not in alerted}
    assert not missing, f"attackers without an alert: {missing}"


def test_report_is_self_contained(analyzed):
    page = (analyzed / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), \
        "the report loads something from the network"
    for ip in attackers(SAMPLE / "labels.json"):
        assert ip in page


def test_report_draws_in_a_real_browser(analyzed, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs Chromium (apt-get install chromium)")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", (analyzed / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert 'data-plots="ok"' in dom, re.findall(r'data-plots="[^"]*"', dom) or proc.stderr[-2000:]
    for plot in ("score-over-time", "distributions", "clusters"):
        section = dom.split(f'id="{plot}"', 1)[1].split("<h2", 1)[0]
        shapes = len(re.findall(r"<(circle|rect|path)\b", section))
        assert shapes > 0, f"{plot}: nothing drawn"


def test_a_saved_model_scores_the_same(analyzed, tmp_path):
    out = tmp_path / "again"
    proc = netsift("analyze", str(SAMPLE / "capture.pcap.xz"), "--out", str(out),
                   "--window", "10s", "--model", str(analyzed / "model.npz"), "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "model.npz").exists() and not (out / "report.html").exists()
    first = pq.read_table(analyzed / "scores.parquet")
    again = pq.read_table(out / "scores.parquet")
    assert again.column("score").to_pylist() == first.column("score").to_pylist()
    assert (out / "alerts.jsonl").read_text().replace("model.npz", "") == \
        (analyzed / "alerts.jsonl").read_text().replace("model.npz", "")


def test_a_model_for_other_features_is_refused(analyzed, tmp_path):
    proc = netsift("analyze", str(SAMPLE / "capture.pcap.xz"), "--out", str(tmp_path / "x"),
                   "--model", str(tmp_path / "missing.npz"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("netsift: error: model file not found")


def test_not_a_capture_is_one_line(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a capture\n")
    proc = netsift("analyze", str(junk), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("netsift: error: ")


def test_a_killed_runs_half_written_outputs_are_cleared_by_the_next(tmp_path, dead_pid):
    """Outputs are written to ``.NAME.tmp-HOST-PID-*`` and renamed; a SIGKILL leaves the
    scratch file. The next run into OUT removes those of dead processes of this host
    (before it ingests anything, so even a run that then fails), and no others."""
    import socket

    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid
    host = socket.gethostname()
    left = [out / f".{name}.tmp-{host}-{dead}-0badf00d"
            for name in ("features.parquet", "scores.parquet", "model.npz", "report.html")]
    live = out / f".alerts.jsonl.tmp-{host}-{os.getpid()}-00c0ffee"
    for path in (*left, live):
        path.write_bytes(b"half written")
    junk = tmp_path / "notes.txt"
    junk.write_text("not a capture\n")
    assert netsift("analyze", str(junk), "--out", str(out)).returncode == 1
    assert not any(path.exists() for path in left) and live.exists()


def test_evaluate_prints_every_detector(tmp_path):
    report = tmp_path / "evaluation.json"
    proc = netsift("evaluate", str(SAMPLE), "--detectors", "iforest", "meanshift",
                   "--json", str(report))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:5] == ["capture", "detector", "ROC-AUC", "AP", "P@k"]
    assert [line.split()[1] for line in lines[1:]] == ["iforest", "meanshift"]
    results = json.loads(report.read_text())
    assert {r["detector"] for r in results} == {"iforest", "meanshift"}


def test_the_default_detector_meets_the_target_on_the_bundled_lab():
    spec = nf.FeatureSpec(window_ns=nf.parse_duration("10s"))
    (result,) = evaluate([str(SAMPLE)], ["iforest"], spec)
    assert result.k >= 20 and result.normals > 400
    assert result.average_precision >= TARGET_AP, result
    assert result.roc_auc >= 0.99, result


# -- a fresh lab, made by real tools ----------------------------------------------------

@pytest.fixture(scope="module")
def fresh_lab(tmp_path_factory) -> Path:
    reason = netlab_cli.missing_requirements()
    if reason:
        pytest.skip(f"the lab needs root and its tools: {reason}")
    out = tmp_path_factory.mktemp("lab")
    result = netlab_cli.run_lab(out, seconds=150, clients=24, seed=3)
    assert result.capture.stat().st_size > 1_000_000
    return out


@pytest.mark.root
def test_the_lab_records_every_attack_and_cleans_up(fresh_lab):
    labels = json.loads((fresh_lab / "labels.json").read_text())
    kinds = {a["kind"] for a in labels["attacks"]}
    assert kinds == {"syn-scan", "ping-sweep", "syn-flood", "udp-flood", "slow-scan"}
    for attack in labels["attacks"]:
        assert labels["started"] <= attack["start"] < attack["end"]
        assert attack["end"] <= labels["started"] + labels["seconds"] + 5
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(rf"nl{os.getpid() % 100000}-", namespaces)


@pytest.mark.root
def test_the_default_detector_meets_the_target_on_a_fresh_lab(fresh_lab):
    spec = nf.FeatureSpec(window_ns=nf.parse_duration("10s"))
    (result,) = evaluate([str(fresh_lab)], ["iforest"], spec)
    assert result.average_precision >= TARGET_AP, result
    assert result.roc_auc >= 0.98, result
