"""Run under `mpiexec -n P` (P = 2 or 3): SyncBatchNorm's training step on each rank's share of
one global batch, unequal shares (an empty one and one of a single value per channel among them);
rank 0 writes the whole batch's results (.npz) for tests/test_sync_batch_norm.py to compare with
one process's BatchNorm over the concatenated batch.

argv: OUT BACKENDS (comma-separated: numpy,emu; cuda on tests/cupy_sim's simulated GPUs, one a
rank, whose NCCL runs over MPI). The cases (CASES[P]) are rebuilt by the test from the same seeds:
per case the global x and dy, and each rank's share sizes. Saved per case: y and dx (the shares
concatenated in rank order), dweight and dbias (summed over the ranks: each rank's are its share's,
as PyTorch's), the running statistics and batches counted and the forward's statistics (checked
bit-identical on every rank), and the eval-mode output of the whole batch after the step. With a
whole batch of one value per channel, every rank must raise ValueError before touching its
buffers; an all-gather of arrays of other sizes, ReplicaMismatch. Last, a few data-parallel
training steps of a model converted by convert_sync_batchnorm (train/<name>: its state after them)."""
import sys

import numpy as np

from cnn_gpu import distributed as dist
from cnn_gpu import nn, optim
from cnn_gpu.nn.module import to_backend_array, to_host

# ranks: [(channel-and-trailing shape, each rank's share of the batch, momentum)]
CASES = {
    2: [((3, 4, 5), (3, 5), 0.1), ((4,), (1, 4), None), ((2, 7), (6, 2), 0.3)],
    3: [((3, 2, 3, 2), (2, 0, 5), 0.1), ((2, 4, 4), (4, 1, 3), 0.1)],
}
DTYPES = ("float64", "float32", "float16")


def case_arrays(index, trailing, shares, dtype):
    """The global batch's x and dy (fresh, never zeros) and per-rank slices of the batch axis. The
    channels' means, up to 30 times their deviations, would cancel E[x^2] - E[x]^2's digits away."""
    rng = np.random.default_rng(1000 + index)
    shape = (sum(shares), *trailing)
    x = rng.standard_normal(shape) + rng.uniform(-30, 30, trailing[:1] + (1,) * (len(trailing) - 1))
    dy = rng.standard_normal(shape)
    starts = np.cumsum((0, *shares))
    return x.astype(dtype), dy.astype(dtype), [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]


def layer(channels, momentum, dtype, backend):
    """A SyncBatchNorm with fresh affine parameters and running statistics (the same on every rank)."""
    rng = np.random.default_rng(channels)
    bn = nn.SyncBatchNorm(channels, momentum=momentum, dtype=dtype)
    bn.weight.data = (1 + 0.5 * rng.standard_normal(channels)).astype(dtype)
    bn.bias.data = rng.standard_normal(channels).astype(dtype)
    bn.running_mean = rng.standard_normal(channels).astype(dtype)
    bn.running_var = (1 + rng.random(channels)).astype(dtype)
    return bn.to(backend)


def run_case(w, index, trailing, shares, momentum, backend, dtype):
    x, dy, slices = (to_backend_array(a, backend) if isinstance(a, np.ndarray) else a
                     for a in case_arrays(index, trailing, shares, dtype))
    mine = slices[w.rank]
    bn = layer(trailing[0], momentum, dtype, backend)
    y = bn(x[mine])
    dx = bn.backward(dy[mine])
    state = {name: np.asarray(value) for name, value in bn.state_dict().items() if "running" in name
             or "batches" in name}
    # every rank normalised with, and blended, the same statistics to the bit (the forward's saved ones)
    same = dict(state, mean=to_host(bn._saved.mean), invstd=to_host(bn._saved.invstd))
    for other in w.allgather_object(same)[1:]:
        assert all(other[name].tobytes() == value.tobytes() for name, value in same.items()), (other, same)
    parts = w.allgather_object([to_host(a) for a in (y, dx, bn.weight.grad, bn.bias.grad)])
    bn.eval()
    result = {"y": np.concatenate([p[0] for p in parts]), "dx": np.concatenate([p[1] for p in parts]),
              "dweight": sum(p[2].astype(np.float64) for p in parts),
              "dbias": sum(p[3].astype(np.float64) for p in parts), "eval_y": to_host(bn(x)), **state}
    return {f"{index}/{backend}/{dtype}/{name}": value for name, value in result.items()}


def refuse_a_lone_value(w):
    """A whole batch of one value per channel (rank 0's one sample, the others' none): ValueError on
    every rank, its buffers and batch count untouched."""
    bn = nn.SyncBatchNorm(3, dtype=np.float64)
    before = {name: np.array(value) for name, value in bn.state_dict().items()}
    try:
        bn(np.ones((1 if w.rank == 0 else 0, 3)))
    except ValueError as refusal:
        message = str(refusal)
    else:
        message = "not refused"
    assert all(before[name].tobytes() == np.asarray(value).tobytes() for name, value in bn.state_dict().items())
    return w.allgather_object(message)


def gather_unlike_arrays(w):
    """Every rank's message when rank r gathers 2 + r values: refused before any data moves."""
    try:
        dist.allgather(np.zeros(2 + w.rank))
    except dist.ReplicaMismatch as refusal:
        message = str(refusal)
    else:
        message = "not refused"
    return w.allgather_object(message)


def train(rank, ranks, steps=3, per_rank=4):
    """A small CNN's state after `steps` SGD steps of global batches of per_rank * ranks images,
    this rank's share of each: its batch norm converted to SyncBatchNorm where ranks > 1, the
    gradients then averaged (allreduce_gradients). One process with ranks=1 and per_rank * P
    images takes the same steps with its BatchNorm2d."""
    nn.init.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64), nn.BatchNorm2d(3, dtype=np.float64),
                          nn.ReLU(), nn.Flatten(), nn.Linear(48, 3, dtype=np.float64))
    if ranks > 1:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    data = np.random.default_rng(8)
    for _ in range(steps):
        x = data.standard_normal((per_rank * ranks, 2, 4, 4)) * 3 + 1
        labels = data.integers(0, 3, per_rank * ranks)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        opt.zero_grad()
        loss_fn.forward(model(x[mine]), labels[mine])
        model.backward(loss_fn.backward())
        dist.allreduce_gradients(model, count=per_rank)
        opt.step()
    return model.state_dict()


def main():
    out, backends = sys.argv[1], sys.argv[2].split(",")
    w = dist.init(timeout_s=60)
    if "cuda" in backends:
        import cupy
        cupy.cuda.Device(w.local_rank).use()
    results = {}
    for index, (trailing, shares, momentum) in enumerate(CASES[w.size]):
        for backend, dtype in ((backend, dtype) for backend in backends for dtype in DTYPES):
            results.update(run_case(w, index, trailing, shares, momentum, backend, dtype))
    messages = refuse_a_lone_value(w)
    mismatches = gather_unlike_arrays(w)
    trained = {f"train/{name}": value for name, value in train(w.rank, w.size).items()}
    if w.rank == 0:
        np.savez(out, refusals=np.array(messages), mismatch=np.array(mismatches), **results, **trained)


if __name__ == "__main__":
    main()
