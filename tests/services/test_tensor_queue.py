"""TensorQueue between two real processes over gloo (the CPU stand-in for NCCL)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lingbot_rt.services.tensor_queue import TensorQueue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages():
    g = torch.Generator().manual_seed(0)
    return [({"latents": torch.randn(2, 16, 3, 8, 8, generator=g), "ids": torch.arange(5)},
             {"session": "a", "block": 0}),
            ({"latents": torch.randn(1, 16, 3, 8, 8, generator=g).to(torch.bfloat16)}, {"session": "b", "block": 7}),
            ({}, {"empty": True})]


def _worker(rank: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        queue = TensorQueue(peer=1 - rank)
        if rank == 0:                                     # the DiT stage
            for tensors, meta in _messages():
                queue.put(tensors, meta)
            queue.put(None)
        else:                                             # the VAE stage
            received = []
            while (message := queue.get()) is not None:
                received.append(message)
            results.extend(received)
    finally:
        dist.destroy_process_group()


def test_tensors_and_meta_arrive_in_order_then_the_end_marker():
    with mp.Manager() as manager:
        results = manager.list()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
        received = list(results)
    sent = _messages()
    assert [meta for _, meta in received] == [meta for _, meta in sent]
    for (got, _), (want, _) in zip(received, sent):
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_put_refuses_a_tensor_on_another_device_or_dtype():
    queue = TensorQueue(peer=1, device="meta")
    with pytest.raises(ValueError, match="this queue sends from meta"):
        queue.put({"x": torch.zeros(2)})
    with pytest.raises(TypeError, match="has dtype torch.complex64"):
        TensorQueue(peer=1).put({"x": torch.zeros(2, dtype=torch.complex64)})
