"""The all-reduce model (cnn_gpu.roofline.collective) on hand-checked cases."""
from __future__ import annotations

import pytest

from cnn_gpu.roofline.collective import LINKS, allreduce_time, data_parallel_step


def test_one_rank_costs_nothing():
    assert allreduce_time(10**9, 1, "nvlink4").seconds == 0.0


def test_bandwidth_term_is_the_ring_volume_over_the_link():
    # 8 ranks, 1 GB: each sends 2 * 7/8 GB at 450 GB/s = 3.889 ms, plus 250 buckets x 14 steps x 3 us
    estimate = allreduce_time(10**9, 8, "nvlink4")
    assert estimate.bandwidth_seconds == pytest.approx(1.75e9 / 450e9)
    buckets = -(-10**9 // (4 << 20))
    assert estimate.latency_seconds == pytest.approx(buckets * 14 * 3e-6)
    assert estimate.seconds == pytest.approx(estimate.bandwidth_seconds + estimate.latency_seconds)
    assert estimate.modeled


def test_two_machines_run_at_the_network_speed():
    resnet18 = 11_173_962 * 4
    one = data_parallel_step(resnet18, 8, 1)
    two = data_parallel_step(resnet18, 8, 2)
    assert one.link is LINKS["nvlink4"] and two.link is LINKS["ib_ndr"]
    assert two.seconds > 5 * one.seconds


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        allreduce_time(100, 0, "nvlink4")
    with pytest.raises(KeyError):
        allreduce_time(100, 2, "carrier-pigeon")
