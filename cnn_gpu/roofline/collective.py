"""A model of the gradient all-reduce of data-parallel training (cnn_gpu.distributed): an
estimate, never a measurement.

The library reduces each bucket as a reduce-scatter then an all-gather over P ranks, so every
rank sends and receives 2 (P - 1) / P of the bucket's bytes, in 2 (P - 1) latency-bound steps
per bucket (the classic ring cost; NCCL's own ring has the same volume). Time per step:

    buckets x 2 (P - 1) x latency  +  2 (P - 1) / P x gradient bytes / link bandwidth

with the slowest link on the ring: NVLink inside a machine, the network between machines.
Ignored: overlap with the backward pass (the library reduces after it), NCCL's tree algorithm
for small messages, PCIe hops, congestion and stragglers.

Links (per GPU, one direction; public datasheets): NVLink 4 on H100/H200 SXM 450 GB/s (900 GB/s
both ways), NVLink 3 on A100 SXM 300 GB/s, NVLink 2 on V100 SXM2 150 GB/s; InfiniBand NDR 400
Gb/s = 50 GB/s and HDR 200 Gb/s = 25 GB/s per GPU (one NIC per GPU, as in DGX systems).
Latencies are order-of-magnitude per-step figures (a few microseconds), labelled as assumptions.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..distributed import BUCKET_BYTES


@dataclass(frozen=True)
class Link:
    key: str
    name: str
    gbs: float            # GB/s (10^9 bytes) per GPU, one direction
    latency_s: float      # per ring step (assumed)


LINKS = {link.key: link for link in (
    Link("nvlink4", "NVLink 4 (H100/H200 SXM)", 450.0, 3e-6),
    Link("nvlink3", "NVLink 3 (A100 SXM)", 300.0, 3e-6),
    Link("nvlink2", "NVLink 2 (V100 SXM2)", 150.0, 3e-6),
    Link("ib_ndr", "InfiniBand NDR 400 Gb/s per GPU", 50.0, 8e-6),
    Link("ib_hdr", "InfiniBand HDR 200 Gb/s per GPU", 25.0, 8e-6),
)}


@dataclass(frozen=True)
class AllreduceEstimate:
    ranks: int
    link: Link
    gradient_bytes: int
    seconds: float
    bandwidth_seconds: float
    latency_seconds: float
    modeled: bool = True


def allreduce_time(gradient_bytes: int, ranks: int, link: str | Link,
                   bucket_bytes: int = BUCKET_BYTES) -> AllreduceEstimate:
    """Modeled time of one all-reduce of `gradient_bytes` over `ranks` ranks on `link`."""
    link = LINKS[link] if isinstance(link, str) else link
    if ranks < 1 or gradient_bytes < 0:
        raise ValueError(f"allreduce_time: ranks {ranks}, gradient_bytes {gradient_bytes}")
    if ranks == 1:
        return AllreduceEstimate(1, link, gradient_bytes, 0.0, 0.0, 0.0)
    buckets = max(1, -(-gradient_bytes // bucket_bytes))
    bandwidth = 2 * (ranks - 1) / ranks * gradient_bytes / (link.gbs * 1e9)
    latency = buckets * 2 * (ranks - 1) * link.latency_s
    return AllreduceEstimate(ranks, link, gradient_bytes, bandwidth + latency, bandwidth, latency)


def data_parallel_step(gradient_bytes: int, gpus_per_machine: int, machines: int,
                       intra: str = "nvlink4", inter: str = "ib_ndr") -> AllreduceEstimate:
    """The all-reduce of one training step on machines x gpus_per_machine ranks: the ring's
    slowest link sets the pace (the network as soon as there are two machines)."""
    ranks = gpus_per_machine * machines
    return allreduce_time(gradient_bytes, ranks, inter if machines > 1 else intra)
