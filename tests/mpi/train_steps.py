"""Run under `mpiexec -n P`: a few data-parallel SGD steps; rank 0 writes the weights (.npz).

argv: OUT DTYPE BATCH_PER_RANK STEPS [fault|hang|mismatch]. With "fault", rank 1 raises in its
second step, while rank 0 waits in the all-reduce; with "hang", rank 1 stops there for a minute
(rank 0's collective timeout must end the job); with "mismatch", rank 1 builds a wider model
("unchecked": and the replica check and broadcast are skipped, so the all-reduce meets it);
with "large", huge gradients are reduced (no overflow allowed); with "frozen", the convolution is
frozen (requires_grad False) and SGD decays weights (a zero gradient would move it).
With "broadcast", every rank builds its own BatchNorm model and broadcast_parameters makes them
rank 0's (float and integer buffers alike); nothing trains."""
import sys
import time

import numpy as np

from cnn_gpu import distributed as dist
from cnn_gpu import nn, optim


def build(dtype, width=4):
    nn.init.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, 3))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def reduce_large_gradients(out, dtype, w):
    """Loss-scaled gradients near the dtype's largest value, weighted by a sample count of 8: the
    weighting must not overflow (float16 reduces in FP32)."""
    model = build(dtype)
    big = np.finfo(dtype).max / 2
    for p in model.parameters():
        p.grad = np.full(p.data.shape, big, dtype=dtype)
    dist.allreduce_gradients(model, count=8)
    if w.rank == 0:
        np.savez(out, **{f"g{i}": p.grad for i, p in enumerate(model.parameters())})


def broadcast_batch_norm(out, dtype, w):
    nn.init.manual_seed(100 + w.rank)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    x = np.random.default_rng(w.rank).standard_normal((4, 1, 5, 5)).astype(dtype)
    for _ in range(w.rank + 1):           # num_batches_tracked differs: 1 on rank 0, 2 on rank 1
        model(x)
    dist.broadcast_parameters(model)
    weights = model.state_dict()
    for other in w.allgather_object(weights)[1:]:
        for name, value in weights.items():
            assert other[name].dtype == value.dtype and other[name].tobytes() == value.tobytes(), name
    if w.rank == 0:
        np.savez(out, **weights)


def main():
    out, dtype, batch, steps = sys.argv[1], np.dtype(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else ""
    w = dist.init(timeout_s=2 if mode == "hang" else 20)
    if mode == "broadcast":
        return broadcast_batch_norm(out, dtype, w)
    if mode == "large":
        return reduce_large_gradients(out, dtype, w)
    rng = np.random.default_rng(7)            # the same data on every rank
    x = rng.standard_normal((53, 1, 6, 6)).astype(dtype)
    y = rng.integers(0, 3, 53)
    model = build(dtype, width=5 if mode in ("mismatch", "unchecked") and w.rank == 1 else 4)
    if mode != "unchecked":   # unchecked: the all-reduce itself must find the other model
        dist.check_replicas(model, {"lr": 0.1})
        dist.broadcast_parameters(model)
    if mode == "frozen":
        model[0].requires_grad_(False)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01 if mode == "frozen" else 0)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = np.random.default_rng(11)
    done = 0
    while done < steps:
        for idx in dist.shard_batches(len(x), batch, shuffle, w.rank, w.size):
            if mode == "fault" and w.rank == 1 and done == 1:
                raise RuntimeError("planted failure on rank 1")
            if mode == "hang" and w.rank == 1 and done == 1:
                time.sleep(60)
            opt.zero_grad()
            if len(idx):
                loss_fn.forward(model(x[idx]), y[idx])
                model.backward(loss_fn.backward())
            dist.allreduce_gradients(model, count=len(idx))
            opt.step()
            done += 1
            if done == steps:
                break
    weights = {name: value for name, value in model.state_dict().items()}
    everyone = w.allgather_object({k: v.tobytes() for k, v in weights.items()})
    assert all(other == everyone[0] for other in everyone), "ranks hold different weights"
    if w.rank == 0:
        np.savez(out, **weights)


if __name__ == "__main__":
    main()
