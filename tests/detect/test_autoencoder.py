"""The autoencoder beyond the shared contract: devices, PyTorch as an extra, the training
function for distributed use."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from netsift.detect import AutoencoderDetector, Detector, train_autoencoder
from netsift.errors import UsageError

torch = pytest.importorskip("torch")

FAST = {"epochs": 30, "seed": 5}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_device_falls_back_to_cpu_and_says_so(no_gpu, planted, caplog):
    caplog.set_level(logging.INFO, logger="netsift.detect")
    detector = AutoencoderDetector(**FAST).fit(planted.rows)
    detector.score(planted.rows)
    assert detector.device_ == "cpu"
    messages = [r.getMessage() for r in caplog.records if r.name == "netsift.detect"]
    assert len(messages) == 1, messages  # once per detector, not per call
    assert "using device cpu" in messages[0] and "no CUDA GPU" in messages[0]


def test_cuda_without_gpu_is_a_usage_error(no_gpu, planted):
    with pytest.raises(UsageError, match="device='cuda' but torch sees no CUDA GPU") as error:
        AutoencoderDetector(device="cuda", **FAST).fit(planted.rows)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("options", [{"device": "tpu"}, {"device": "cuda:x"}, {"hidden": ()},
                                     {"hidden": (8, 0)},
                                     {"hidden": 8}, {"batch_size": 0}])
def test_bad_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        AutoencoderDetector(**options)


def test_loads_and_scores_on_the_cpu(planted, tmp_path):
    detector = AutoencoderDetector(device="cpu", **FAST).fit(planted.rows)
    path = detector.save(tmp_path / "model.npz")
    loaded = Detector.load(path, device="cpu")
    assert loaded.device_ is None  # chosen on first use, not on load
    np.testing.assert_array_equal(loaded.score(planted.rows), detector.score(planted.rows))
    assert loaded.device_ == "cpu"
    with np.load(path, allow_pickle=False) as saved:
        weights = [key for key in saved.files if key.startswith("model/")]
        assert all(saved[key].dtype == np.float32 for key in weights)


def test_train_autoencoder_returns_the_weights_a_detector_is_made_of(planted):
    detector = AutoencoderDetector(device="cpu", **FAST).fit(planted.rows)
    scaled = detector.scaling_.transform(detector._matrix(planted.rows))
    weights = train_autoencoder(scaled, detector.get_params(), "cpu")
    n_features = len(detector.features)
    # (32, 8) mirrored, the bottleneck capped at half the 7 features.
    assert [weights[f"weight{i}"].shape for i in range(4)] == \
        [(32, n_features), (3, 32), (32, 3), (n_features, 32)]
    assert sorted(weights) == sorted(f"{kind}{i}" for i in range(4) for kind in ("weight", "bias"))
    assert all(isinstance(w, np.ndarray) and w.dtype == np.float32 for w in weights.values())
    saved = detector._model_state()[1]
    assert all(np.array_equal(weights[key], saved[key]) for key in saved)
    rebuilt = AutoencoderDetector.from_weights(weights, detector.scaling_, scaled,
                                               **detector.get_params())
    np.testing.assert_array_equal(rebuilt.score(planted.rows), detector.score(planted.rows))


def test_training_leaves_torch_thread_count_alone(planted):
    threads = torch.get_num_threads()
    AutoencoderDetector(device="cpu", epochs=1).fit(planted.rows)
    assert torch.get_num_threads() == threads


def test_single_rank_process_group_trains_the_same(planted, tmp_path):
    """With a process group the network is wrapped in DistributedDataParallel."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    detector = AutoencoderDetector(device="cpu", **FAST).fit(planted.rows)
    scaled = detector.scaling_.transform(detector._matrix(planted.rows))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=0, world_size=1)
    try:
        weights = train_autoencoder(scaled, detector.get_params(), "cpu")
    finally:
        dist.destroy_process_group()
    saved = detector._model_state()[1]
    for key in saved:
        np.testing.assert_allclose(weights[key], saved[key], rtol=0, atol=1e-5)


def test_without_torch_import_works_and_fit_says_what_to_install(planted, monkeypatch,
                                                                  tmp_path):
    # A torch module that fails to import shadows the real one, as if it were missing.
    (tmp_path / "torch.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    subprocess.run([sys.executable, "-c", "import netsift.detect"], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(tmp_path)})
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(UsageError, match=r"pip install 'netsift\[torch\]'"):
        AutoencoderDetector(**FAST).fit(planted.rows)


@pytest.mark.gpu
def test_trains_on_gpu_and_loads_on_cpu(planted, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    on_gpu = AutoencoderDetector(device="auto", seed=5).fit(planted.rows)
    assert on_gpu.device_ == "cuda"
    gpu_scores = on_gpu.score(planted.rows)
    assert roc_auc_score(planted.is_anomaly, gpu_scores) >= 0.95
    on_cpu = AutoencoderDetector(device="cpu", seed=5).fit(planted.rows)
    # Same start and shuffles; float rounding differs by device, so close, not equal.
    assert np.corrcoef(gpu_scores, on_cpu.score(planted.rows))[0, 1] > 0.95
    loaded = Detector.load(on_gpu.save(tmp_path / "model.npz"), device="cpu")
    np.testing.assert_allclose(loaded.score(planted.rows), gpu_scores, rtol=0, atol=1e-3)
    assert loaded.device_ == "cpu"
