"""Device-to-host reads per call, counted on the emulator with a CuPy-like array (each conversion
of a device value to a Python number is one synchronising transfer on a GPU): cross_entropy reads
its loss once (its class indices are checked only when that loss is NaN) and with as_array=True
not at all, multi_margin_loss and gaussian_nll_loss check their values before the launch (one read
more), max_pool2d_backward checks its indices with one read, and a training epoch reads its
running metrics when they are shown, not every step."""
from __future__ import annotations

import types

import numpy as np
import pytest

from cnn_gpu import backend, models, nn, optim
from cnn_gpu.amp import GradScaler
from cnn_gpu import functional as F
from cnn_gpu.cli import metrics as cli_metrics
from cnn_gpu.cli import train as train_cli
from helpers import EpochBar

EMU_REASON = backend.why_unavailable("emu")
needs_emu = pytest.mark.skipif(bool(EMU_REASON), reason=f"emulator unavailable: {EMU_REASON}")


class HostReads(np.ndarray):
    """A NumPy array that counts reads to the host the way CuPy makes them: indexing one element
    gives a 0-d array, and int(), float(), bool(), item() and tolist() copy values back."""
    count = 0

    def _read(self):
        HostReads.count += 1
        return np.asarray(self)

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return item if isinstance(item, np.ndarray) else np.asarray(item).view(HostReads)

    def __int__(self):
        return int(self._read())

    def __index__(self):
        return int(self._read())

    def __float__(self):
        return float(self._read())

    def __bool__(self):
        return bool(self._read())

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()


class _CountingNumpy:
    """numpy, whose new arrays are HostReads (stands in for backend.array_module's CuPy)."""

    def __getattr__(self, name):
        attr = getattr(np, name)
        if name in ("empty", "empty_like", "full", "zeros", "concatenate", "stack", "asarray"):
            return lambda *args, **kwargs: attr(*args, **kwargs).view(HostReads)
        return attr


@pytest.fixture
def count_reads(monkeypatch):
    monkeypatch.setattr(backend, "array_module", lambda be: _CountingNumpy())
    HostReads.count = 0
    return HostReads


@needs_emu
@pytest.mark.parametrize("reduction, targets", [("sum", "labels"), ("mean", "probabilities"), ("mean", "labels")])
def test_cross_entropy_reads_its_loss_back_once(count_reads, reduction, targets):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    target = labels if targets == "labels" else rng.dirichlet(np.ones(5), 6).astype(np.float32)
    target = target.view(HostReads)   # on the device, as the logits: a check of its values would read
    loss, _ = F.cross_entropy(logits, target, reduction=reduction, backend="emu")
    assert count_reads.count == 1
    want, _ = F.cross_entropy(logits, target, reduction=reduction, backend="numpy")
    assert loss == pytest.approx(want, rel=1e-6)

    count_reads.count = 0
    kept, _ = F.cross_entropy(logits, target, reduction=reduction, backend="emu", as_array=True)
    assert count_reads.count == 0
    assert kept.shape == () and kept.dtype == np.float64 and float(kept) == loss   # the float's value


@needs_emu
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_as_array_reads_nothing(count_reads, reduction):
    rng = np.random.default_rng(5)
    pred, target = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    kept, _ = F.mse_loss(pred, target, reduction=reduction, backend="emu", as_array=True)
    assert count_reads.count == 0
    loss, _ = F.mse_loss(pred, target, reduction=reduction, backend="emu")
    assert kept.dtype == np.float64 and float(kept) == loss


@needs_emu
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["nll_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                                  "binary_cross_entropy_with_logits"])
def test_the_other_losses_read_their_loss_back_once_or_not_at_all(count_reads, name, reduction):
    """nll_loss's class indices and binary_cross_entropy's [0, 1] range are checked by the loss read
    back (when NaN), not by reading the inputs: one read, none with as_array."""
    rng = np.random.default_rng(7)
    if name == "nll_loss":
        x, target = rng.standard_normal((6, 5)), rng.integers(0, 5, 6).view(HostReads)
    else:
        x, target = rng.uniform(0.1, 0.9, (2, 4, 3)).view(HostReads), rng.uniform(0, 1, (2, 4, 3)).view(HostReads)
    op = getattr(F, name)
    loss, _ = op(x, target, reduction=reduction, backend="emu")
    assert count_reads.count == 1
    count_reads.count = 0
    kept, _ = op(x, target, reduction=reduction, backend="emu", as_array=True)
    assert count_reads.count == 0
    assert kept.shape == () and kept.dtype == np.float64 and float(kept) == loss


@needs_emu
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["multi_margin_loss", "gaussian_nll_loss"])
def test_losses_checking_values_before_the_launch_read_twice_or_not_at_all(count_reads, name, reduction):
    """multi_margin_loss's class indices and gaussian_nll_loss's var are checked before the launch, as
    PyTorch's: one read of the check, then the loss's; none with as_array (nothing checked then)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 5))
    if name == "multi_margin_loss":
        arrays = (x, rng.integers(0, 5, 6).view(HostReads))
    else:
        arrays = (x, rng.standard_normal((6, 5)), rng.uniform(0.5, 2, (6, 5)).view(HostReads))
    op = getattr(F, name)
    loss = op(*arrays, reduction=reduction, backend="emu")[0]
    assert count_reads.count == 2
    count_reads.count = 0
    kept = op(*arrays, reduction=reduction, backend="emu", as_array=True)[0]
    assert count_reads.count == 0
    assert kept.shape == () and kept.dtype == np.float64 and float(kept) == loss


@needs_emu
@pytest.mark.parametrize("name, reduction", [(name, reduction) for name in ("mse_loss", "l1_loss", "huber_loss")
                                              for reduction in ("mean", "sum")] + [("kl_div", "batchmean")])
@pytest.mark.filterwarnings("ignore:Using a target size")   # torch's warning where sizes differ
def test_weighted_and_broadcast_losses_read_their_loss_back_once_or_not_at_all(count_reads, name, reduction):
    """A weighted mean's divisor (the summed weight, on the device) comes back with the loss in one
    read; a broadcast input's gradient is summed on the device; kl_div's batchmean is one read too."""
    rng = np.random.default_rng(8)
    x, target = rng.standard_normal((2, 1, 3)).view(HostReads), rng.uniform(0, 1, (2, 4, 3)).view(HostReads)
    options = {} if name == "kl_div" else dict(weight=rng.uniform(0.5, 2, (2, 1, 3)).view(HostReads))
    op = getattr(F, name)
    loss, _ = op(x, target, reduction=reduction, backend="emu", **options)
    assert count_reads.count == 1
    count_reads.count = 0
    kept, _ = op(x, target, reduction=reduction, backend="emu", as_array=True, **options)
    assert count_reads.count == 0
    assert kept.shape == () and kept.dtype == np.float64 and float(kept) == loss


@needs_emu
@pytest.mark.parametrize("weighted", [False, True])
def test_class_index_out_of_range_is_refused_after_the_nan_loss_or_kept_as_nan(count_reads, weighted):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    labels[4] = 5
    weight = rng.random(5).astype(np.float32) if weighted else None
    with pytest.raises(ValueError, match=r"target\[4\] = 5 is out of range for 5 classes"):
        F.cross_entropy(logits, labels.view(HostReads), weight, backend="emu")
    count_reads.count = 0
    kept, _ = F.cross_entropy(logits, labels.view(HostReads), weight, backend="emu", as_array=True)
    assert count_reads.count == 0 and np.isnan(kept)
    with pytest.raises(ValueError, match="out of range"):   # numpy checks them as it computes
        F.cross_entropy(logits, labels, weight, backend="numpy", as_array=True)
    with pytest.raises(ValueError, match="out of range for 0 classes"):   # no class to be in range
        F.cross_entropy(logits[:, :0], labels.view(HostReads), backend="emu", as_array=True)
    nan_logits = logits.copy()
    nan_logits[1, 2] = np.nan   # a NaN loss with every index in range: returned as it is
    labels[4] = 0
    assert np.isnan(F.cross_entropy(nan_logits, labels, weight, backend="emu")[0])


def _training_reads(steps: int, clock, batch: int = 4, hidden: bool = False, float16: bool = False):
    """(host reads, the bar's fields) of one training epoch of `steps` batches on the emulator whose
    running metrics are read on `clock` (shown on the bar unless `hidden`: another rank's); float16:
    the model in float16, trained with a GradScaler as `cnn-gpu train --precision fp16` does."""
    rng = np.random.default_rng(7)
    dtype = np.dtype(np.float16 if float16 else np.float32)
    model = models.build("cnn", (1, 8, 8), 4, dtype=dtype, rng=rng).to("emu")
    dataset = types.SimpleNamespace(x_train=rng.standard_normal((batch * steps, 1, 8, 8)).astype(np.float32),
                                    y_train=rng.integers(0, 4, batch * steps))

    original = cli_metrics.RunningMetrics.__init__
    bar = EpochBar(steps, hidden)
    HostReads.count = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_metrics.RunningMetrics, "__init__", lambda self: original(self, clock=clock))
        train_cli.train_epoch(model, nn.CrossEntropyLoss().to("emu"), optim.SGD(model.parameters(), lr=0.1),
                              dataset, batch, np.random.default_rng(8), "emu", bar,
                              scaler=GradScaler() if float16 else None)
    return HostReads.count, bar.postfix


@needs_emu
def test_a_training_epoch_reads_its_metrics_when_shown_not_every_step(count_reads):
    never_due = lambda: 0.0   # noqa: E731
    reads_2, shown_2 = _training_reads(2, never_due)
    reads_6, shown_6 = _training_reads(6, never_due)
    assert reads_2 == reads_6 == 1   # the epoch's end
    ticks = iter(range(0, 1000, 1))   # a second a call: due after every step
    reads_every, shown_every = _training_reads(6, lambda: float(next(ticks)))
    assert reads_every == 6 and shown_every == shown_6 and shown_2 != shown_6
    assert _training_reads(6, never_due, hidden=True) == (0, None)   # a rank whose bar is hidden reads none
    reads_fp16, shown_fp16 = _training_reads(6, never_due, float16=True)
    assert reads_fp16 == 6 + 1 and shown_fp16["scale"] == "65536"   # the scaler's flag a step, as PyTorch's


def test_running_metrics_sum_the_batches_as_read_one_by_one():
    rng = np.random.default_rng(9)
    metrics = cli_metrics.RunningMetrics(every=float("inf"))
    losses, correct, seen = [], 0, 0
    for images in (5, 3, 7):
        logits, labels = rng.standard_normal((images, 4)), rng.integers(0, 4, images)
        loss = rng.random() * 3
        metrics.add(np.asarray(loss), logits, labels)
        losses.append(loss * images)
        correct += int((logits.argmax(axis=1) == labels).sum())
        seen += images
        assert not metrics.due()
    shown = metrics.read()
    assert metrics.seen == seen and metrics.correct == correct and metrics.loss_sum == pytest.approx(sum(losses),
                                                                                                      rel=1e-12)
    assert shown == {"loss": f"{sum(losses) / seen:.4f}", "acc": f"{correct / seen:.1%}"}
    assert cli_metrics.RunningMetrics().read() == {}


@needs_emu
def test_max_pool_backward_checks_its_indices_with_one_read(count_reads):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 6))
    y, indices = F.max_pool2d(x, 3, stride=2, padding=1)
    F.max_pool2d_backward(rng.standard_normal(y.shape), indices.view(HostReads), x.shape, 3, stride=2, padding=1,
                          backend="emu")
    assert count_reads.count == 1
    for tampered, message in ((indices + 100, "must lie in"), (np.where(indices >= 0, indices ^ 1, indices), "not a tap")):
        with pytest.raises(ValueError, match=message):
            F.max_pool2d_backward(y, tampered.view(HostReads), x.shape, 3, stride=2, padding=1, backend="emu")


@needs_emu
@pytest.mark.parametrize("rank", [2, 3])
def test_fractional_max_pool_checks_given_samples_with_one_read_and_its_own_draw_not_at_all(count_reads, monkeypatch,
                                                                                           rank):
    """Samples the op draws lie in [0, 1) by construction: checking them read a flag back every call
    (nn.FractionalMaxPool's every step); samples passed in are still checked, with one read."""
    from cnn_gpu.functional import fractional_pool
    draw = fractional_pool.draw_samples
    monkeypatch.setattr(fractional_pool, "draw_samples", lambda *args: draw(*args).view(HostReads))   # as on CuPy
    rng = np.random.default_rng(5)
    pool = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}[rank]
    x = np.asarray(rng.standard_normal((2, 3) + (7,) * rank)).view(HostReads)
    pool(x, 2, output_ratio=0.5, backend="emu")
    assert count_reads.count == 0
    pool(x, 2, output_ratio=0.5, _random_samples=np.asarray(rng.random((2, 3, rank))).view(HostReads), backend="emu")
    assert count_reads.count == 1
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        pool(x, 2, output_ratio=0.5, _random_samples=np.full((2, 3, rank), 1.0).view(HostReads), backend="emu")


@needs_emu
def test_evaluation_reads_its_count_once(count_reads):
    rng = np.random.default_rng(10)
    model = models.build("cnn", (1, 8, 8), 4, dtype=np.dtype(np.float32), rng=rng).to("emu")
    dataset = types.SimpleNamespace(x_test=rng.standard_normal((20, 1, 8, 8)).astype(np.float32),
                                    y_test=rng.integers(0, 4, 20))
    correct, total = train_cli.evaluate(model, dataset, 4, "emu")
    assert count_reads.count == 1 and total == 20
    model.eval()
    assert correct == int((model(dataset.x_test).argmax(axis=1) == dataset.y_test).sum())


@needs_emu
def test_grad_scaler_reads_one_flag_for_all_gradients(count_reads):
    """unscale_ notes inf/NaN of 20 gradients (3 launches) in one device flag, read once (a check
    per gradient read back 20 times)."""
    rng = np.random.default_rng(11)
    params = [nn.Parameter(rng.standard_normal((3, 5)).astype(np.float16), backend="emu") for _ in range(20)]
    for p in params:
        p.grad = (rng.standard_normal((3, 5)) * 100).astype(np.float16).view(HostReads)
    scaler, optimizer = GradScaler(init_scale=256.0), optim.SGD(params, lr=0.1)
    scaler.unscale_(optimizer)
    assert count_reads.count == 1
    assert scaler.step(optimizer)   # no inf/NaN: stepped


@needs_emu
@pytest.mark.parametrize("kind", ["Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_an_optimizer_step_reads_nothing_back(count_reads, kind, dtype):
    """Their step-dependent scalars (clr, NAdam's step sizes and mu_product, RAdam's rectification)
    come from the step counts on the host: three steps read no device value, state made on the
    device (Adagrad's at construction), float16 master weights too."""
    rng = np.random.default_rng(4)
    params = [nn.Parameter(rng.standard_normal(n).astype(dtype).view(HostReads), backend="emu") for n in (3, 40)]
    optimizer = getattr(optim, kind)(params, weight_decay=0.01)
    for _ in range(3):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(dtype).view(HostReads)
        optimizer.step()
    assert count_reads.count == 0
    assert all(isinstance(v, HostReads) for s in optimizer.state for v in s.values() if hasattr(v, "shape"))
