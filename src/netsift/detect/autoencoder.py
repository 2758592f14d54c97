"""Autoencoder: anomalies are the rows a narrow network cannot reconstruct.

Hawkins, He, Williams, Baxter, "Outlier Detection Using Replicator Neural Networks",
DaWaK 2002 (LNCS 2454): a network trained to reproduce its input through a narrow hidden
layer learns the structure most rows share, and a row's reconstruction error measures how
far it departs from it. Sakurada, Yairi, "Anomaly Detection Using Autoencoders with
Nonlinear Dimensionality Reduction", MLSDA 2014, use the same measure with a plain tanh
autoencoder, as here. Needs PyTorch (``pip install 'netsift[torch]'``); the weights are
saved as plain arrays, so a model trained on a GPU loads and scores on a CPU.

>>> import numpy as np
>>> from netsift.detect import AutoencoderDetector
>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=(200, 3))
>>> detector = AutoencoderDetector(device="cpu", seed=1).fit(normal)
>>> scores = detector.score(np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 8.0]]))
>>> bool(scores[1] > 0.5 > scores[0])
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from netsift.detect.base import Calibration, Detector, log
from netsift.detect.scaling import Scaling
from netsift.errors import UsageError

_SCORE_CHUNK = 65536  # rows per forward pass when scoring: bounds device memory


def _torch():
    try:
        import torch
    except ImportError:
        raise UsageError("the autoencoder detector needs PyTorch: "
                         "pip install 'netsift[torch]'") from None
    return torch


@contextlib.contextmanager
def _one_host_thread(torch, device: str) -> Iterator[None]:
    """Run torch single-threaded on the CPU, restoring the thread count afterwards.

    The layers are too small for intra-op threads to pay off, and on a busy machine their
    spin-waits made training 10-30x slower; one thread also makes the results the same
    whatever the number of cores.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _layer_sizes(n_features: int, hidden: Sequence[int]) -> list[int]:
    """Widths from input to output: the encoder ``hidden``, then the same widths mirrored.

    The bottleneck is at most half the features: a bottleneck as wide as the input lets
    the network learn the identity, and then every row reconstructs well.
    """
    encoder = [int(width) for width in hidden]
    encoder[-1] = min(encoder[-1], max(1, n_features // 2))
    return [n_features, *encoder, *encoder[-2::-1], n_features]


def _initial_weights(sizes: Sequence[int], seed: int) -> dict[str, np.ndarray]:
    # Drawn with numpy, not torch: the same seed gives the same start on every device and
    # leaves torch's global random state alone.
    rng = np.random.default_rng(seed)
    weights = {}
    for layer, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        limit = math.sqrt(6.0 / (n_in + n_out))  # Glorot uniform, suited to tanh
        weights[f"weight{layer}"] = rng.uniform(-limit, limit, (n_out, n_in)).astype(np.float32)
        weights[f"bias{layer}"] = np.zeros(n_out, dtype=np.float32)
    return weights


def _network(torch, weights: dict[str, np.ndarray], device: str):
    """The autoencoder as a ``torch.nn.Sequential`` on ``device``, holding ``weights``."""
    n_layers = len(weights) // 2
    layers = []
    for layer in range(n_layers):
        weight, bias = weights[f"weight{layer}"], weights[f"bias{layer}"]
        # skip_init: the weights are overwritten at once, so don't draw (global) randoms.
        linear = torch.nn.utils.skip_init(torch.nn.Linear, weight.shape[1], weight.shape[0],
                                          device=device)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
            linear.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))
        layers.append(linear)
        if layer < n_layers - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def _weights_of(torch, network) -> dict[str, np.ndarray]:
    linears = [module for module in network if isinstance(module, torch.nn.Linear)]
    weights = {}
    for layer, linear in enumerate(linears):
        weights[f"weight{layer}"] = linear.weight.detach().cpu().numpy().copy()
        weights[f"bias{layer}"] = linear.bias.detach().cpu().numpy().copy()
    return weights


def train_autoencoder(scaled: np.ndarray, params: dict[str, Any],
                      device: str) -> dict[str, np.ndarray]:
    """Train the autoencoder on already scaled rows; return its weights as numpy arrays.

    ``scaled``: (rows, features) matrix from :meth:`Scaling.transform
    <netsift.detect.scaling.Scaling.transform>` (no nulls). ``params``: the detector's
    :meth:`~netsift.detect.base.Detector.get_params` (``hidden``, ``epochs``,
    ``batch_size``, ``learning_rate``, ``weight_decay``, ``seed``; other keys ignored).
    ``device``: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``), not ``"auto"``.
    Returns ``weight0``, ``bias0``, ``weight1``, ... (float32, on the host), layer by layer,
    ``weightN`` shaped (outputs, inputs): what :class:`AutoencoderDetector` saves.

    Training: AdamW on the mean squared reconstruction error, mini-batches of
    ``batch_size`` rows reshuffled each epoch by a generator seeded with ``seed``, from
    Glorot-uniform starting weights drawn with ``seed``.

    For distributed training (e.g. inside a Spark ``TorchDistributor`` worker): initialise
    the process group first (``torch.distributed.init_process_group``), then call this on
    every rank with that rank's own rows, all scaled by one
    :class:`~netsift.detect.scaling.Scaling` fitted on all rows, and the same ``params``.
    The network is then wrapped in ``DistributedDataParallel`` (gradients averaged over
    ranks) and every rank runs the smallest rank's number of batches per epoch, so no rank
    waits on a collective the others never join; every rank returns the same weights. To
    turn them into a model, fit a detector's scaling, set its weights and calibration as
    :meth:`AutoencoderDetector.from_weights` does.
    """
    torch = _torch()
    with _one_host_thread(torch, device):
        return _train(torch, scaled, params, device)


def _train(torch, scaled: np.ndarray, params: dict[str, Any],
           device: str) -> dict[str, np.ndarray]:
    rows = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)).to(device)
    n_rows, n_features = rows.shape
    network = _network(torch, _initial_weights(_layer_sizes(n_features, params["hidden"]),
                                               int(params["seed"])), device)
    trained = network
    batch = max(1, min(int(params["batch_size"]), n_rows))
    steps = math.ceil(n_rows / batch)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trained = torch.nn.parallel.DistributedDataParallel(network)
        # NCCL reduces device tensors, gloo host tensors.
        agreed = torch.tensor([steps], device=device if torch.distributed.get_backend() ==
                              "nccl" else "cpu")
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        steps = int(agreed.item())
    optimizer = torch.optim.AdamW(network.parameters(), lr=float(params["learning_rate"]),
                                  weight_decay=float(params["weight_decay"]))
    # A host generator: the same shuffles whatever the device.
    generator = torch.Generator().manual_seed(int(params["seed"]))
    for _ in range(int(params["epochs"])):
        order = torch.randperm(n_rows, generator=generator).to(device)
        for step in range(steps):
            sample = rows[order[step * batch:(step + 1) * batch]]
            loss = torch.nn.functional.mse_loss(trained(sample), sample)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return _weights_of(torch, network)


def _device_index(device: str) -> int:
    """N of ``cuda:N``; -1 where N is not a number."""
    index = device.partition(":")[2]
    return int(index) if index.isdigit() else -1


class AutoencoderDetector(Detector):
    """A fully connected tanh autoencoder over the scaled features.

    ``raw`` is a row's mean squared reconstruction error over the features (scaled units
    squared); ``explain`` splits it by feature: each feature's squared error.

    ``hidden``: encoder widths, the last one the bottleneck (capped at half the number of
    features); the decoder mirrors them. ``epochs``, ``batch_size`` (rows),
    ``learning_rate``, ``weight_decay``: AdamW training (:func:`train_autoencoder`).
    ``device``: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, or
    ``"cuda"`` / ``"cuda:N"``; the device used is logged once and kept in ``device_``.
    Training on the CPU is deterministic for a given ``seed``; on a GPU, close to it.
    """

    name = "autoencoder"

    def __init__(self, *, hidden: Sequence[int] = (32, 8), epochs: int = 100,
                 batch_size: int = 256, learning_rate: float = 1e-3,
                 weight_decay: float = 1e-4, device: str = "auto", seed: int = 0,
                 categorical: str | Sequence[str] | None = "auto"):
        super().__init__(seed=seed, categorical=categorical)
        try:
            self.hidden = tuple(int(width) for width in hidden)
        except (TypeError, ValueError):
            self.hidden = ()
        if not self.hidden or min(self.hidden) < 1:
            raise UsageError(f"hidden must be a list of positive layer widths, not {hidden!r}")
        if not (device in ("auto", "cpu", "cuda") or
                isinstance(device, str) and device.startswith("cuda:") and
                _device_index(device) >= 0):
            raise UsageError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size!r}")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.device = device
        #: The torch device actually used ("cpu", "cuda", ...); set on fit or first score.
        self.device_: str | None = None
        self._weights: dict[str, np.ndarray] = {}
        self._network = None

    @classmethod
    def from_weights(cls, weights: dict[str, np.ndarray], scaling: Scaling,
                     scaled: np.ndarray, **params) -> AutoencoderDetector:
        """A fitted detector from :func:`train_autoencoder`'s weights (trained elsewhere).

        ``scaling``: the scaling the training rows were scaled with; ``scaled``: scaled fit
        rows, or a sample of them, to calibrate the score scale on; ``params``: the
        constructor arguments the training used.
        """
        detector = cls(**params)
        detector.scaling_ = scaling
        detector._weights = dict(weights)
        detector.calibration_ = Calibration.fit(detector._raw(scaled))
        return detector

    def _torch_device(self) -> str:
        if self.device_ is not None:
            return self.device_
        torch = _torch()
        has_cuda = torch.cuda.is_available()
        if self.device == "auto":
            device = "cuda" if has_cuda else "cpu"
            reason = "a CUDA GPU is available" if has_cuda else "torch sees no CUDA GPU"
        elif self.device.startswith("cuda") and not has_cuda:
            build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
            raise UsageError(f"device={self.device!r} but torch sees no CUDA GPU{build}; "
                             f"use device='cpu' or 'auto'")
        elif self.device.startswith("cuda:") and \
                not 0 <= _device_index(self.device) < torch.cuda.device_count():
            raise UsageError(f"device={self.device!r} but torch sees "
                             f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
        else:
            device, reason = self.device, "as requested"
        log.info("autoencoder detector: using device %s (device=%r: %s)", device,
                 self.device, reason)
        self.device_ = device
        return device

    def _fit(self, scaled: np.ndarray) -> None:
        self._weights = train_autoencoder(scaled, self.get_params(), self._torch_device())
        self._network = None

    def _reconstruct(self, scaled: np.ndarray) -> np.ndarray:
        torch = _torch()
        device = self._torch_device()
        if self._network is None:
            self._network = _network(torch, self._weights, device).eval()
        out = np.empty(scaled.shape)
        with torch.inference_mode(), _one_host_thread(torch, device):
            for start in range(0, scaled.shape[0], _SCORE_CHUNK):
                chunk = np.ascontiguousarray(scaled[start:start + _SCORE_CHUNK], np.float32)
                out[start:start + _SCORE_CHUNK] = \
                    self._network(torch.from_numpy(chunk).to(device)).cpu().numpy()
        return out

    def _contributions(self, scaled: np.ndarray) -> np.ndarray:
        return (scaled - self._reconstruct(scaled)) ** 2

    def _raw(self, scaled: np.ndarray) -> np.ndarray:
        return self._contributions(scaled).mean(axis=1)

    def _model_state(self):
        return {"layers": len(self._weights) // 2}, dict(self._weights)

    def _restore_model(self, meta, arrays):
        names = [f"{kind}{layer}" for layer in range(int(meta["layers"]))
                 for kind in ("weight", "bias")]
        self._weights = {name: arrays[name] for name in names}
        self._network = None
