"""Ulysses sequence parallelism (head-parallel attention) over torch.distributed.

Every rank holds L / N of a forward's tokens for everything that is per token (embeddings,
modulation, norms, linears, FFN, cross-attention). Self-attention needs every token, so around
it one all-to-all trades the token split for a head split: q, k, v go from
[B, L / N, H, D] to [B, L, H / N, D], each rank attends the whole sequence with its H / N heads
(block masks and the streaming KV cache are unchanged in layout, the cache just holds H / N
heads), and a second all-to-all brings the output back to [B, L / N, H, D]
(DeepSpeed-Ulysses, arXiv 2309.14509; upstream LingBot runs `--ulysses_size 8`). Per layer
that is 4 all-to-alls of L * dim / N elements per rank, against 2 all-gathers of the whole
sequence for ring/all-gather designs; heads and tokens must both divide by N.

The collectives are `torch.distributed.nn.functional.all_to_all_single` / `all_gather`
(differentiable), one code path for NCCL on GPUs and gloo on CPUs: gloo implements
all_to_all_single (torch 2.13, tested with 2 and 4 CPU processes in
tests/model/test_sequence_parallel.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


@dataclass
class SequenceParallel:
    """The ranks of one sequence-parallel group and the token / head exchanges between them."""

    group: dist.ProcessGroup | None = None     # None = the default (world) group

    def __post_init__(self):
        if not dist.is_initialized():
            raise RuntimeError("sequence parallelism needs torch.distributed.init_process_group first")

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def _check_divisible(self, size: int, what: str) -> int:
        if size % self.world_size:
            raise ValueError(f"{what} {size} is not divisible by the {self.world_size} sequence-parallel ranks")
        return size // self.world_size

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of the tokens of x [B, L, ...] -> [B, L / N, ...]."""
        local = self._check_divisible(x.shape[1], "sequence length")
        return x.narrow(1, self.rank * local, local)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's slice [B, L / N, ...] -> the whole sequence [B, L, ...], in rank order."""
        return torch.cat(dist_fn.all_gather(x.contiguous(), group=self.group), dim=1)

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L / N, H, D] (this rank's tokens, every head) -> [B, L, H / N, D] (every token,
        this rank's heads)."""
        n = self.world_size
        b, local, heads, d = x.shape
        # chunk j of dim 0 goes to rank j: head group j of our tokens
        send = x.reshape(b, local, n, self._check_divisible(heads, "num_heads"), d).permute(2, 0, 1, 3, 4)
        recv = self._all_to_all(send.contiguous())          # [N, B, L / N, H / N, D]: chunk r = rank r's tokens
        return recv.permute(1, 0, 2, 3, 4).reshape(b, n * local, heads // n, d)

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H / N, D] -> [B, L / N, H, D], the inverse of `seq_to_heads`."""
        n = self.world_size
        b, length, heads, d = x.shape
        # chunk j of dim 0 goes to rank j: token slice j of our heads
        send = x.reshape(b, n, self._check_divisible(length, "sequence length"), heads, d).transpose(0, 1)
        recv = self._all_to_all(send.contiguous())          # [N, B, L / N, H / N, D]: chunk r = rank r's heads
        return recv.permute(1, 2, 0, 3, 4).reshape(b, length // n, n * heads, d)

    def _all_to_all(self, send: torch.Tensor) -> torch.Tensor:
        return dist_fn.all_to_all_single(torch.empty_like(send), send, group=self.group)
