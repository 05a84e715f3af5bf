"""A one-way queue of tensors between two ranks of a torch.distributed group: how the DiT stage
hands a block's latents to the VAE stage on another GPU (NCCL) or process (gloo on CPU).

Ray places the stages; the bytes go over torch.distributed point-to-point (what vLLM does
between its workers), not through Ray's object store. A message is a dict of named tensors
plus a small JSON-able `meta` (session id, block index, action sequence, timings):

    header length  int64 [1]       on the queue's device
    header         uint8 [n]       JSON: meta, and name/shape/dtype of every tensor
    tensors        one send each, in header order

NCCL moves only device tensors, so the header travels as a device tensor too. `put(None)`
sends the end-of-stream marker; `get` then returns None.
"""
from __future__ import annotations

import json

import torch
import torch.distributed as dist

DTYPES = {str(t): t for t in (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8)}


class TensorQueue:
    def __init__(self, peer: int, device: torch.device | str = "cpu", group=None):
        self.peer, self.device, self.group = peer, torch.device(device), group

    def _send(self, tensor: torch.Tensor) -> None:
        dist.send(tensor.contiguous(), self.peer, group=self.group)

    def _recv(self, shape, dtype) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(tensor, self.peer, group=self.group)
        return tensor

    def put(self, tensors: dict[str, torch.Tensor] | None, meta: dict | None = None) -> None:
        """Send one message (blocks until the peer has posted the matching receives)."""
        if tensors is None:
            header = {"end": True}
        else:
            for name, tensor in tensors.items():
                if str(tensor.dtype) not in DTYPES:
                    raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}; the queue carries {sorted(DTYPES)}")
                if tensor.device != self.device:
                    raise ValueError(f"tensor {name!r} is on {tensor.device}; this queue sends from {self.device}")
            header = {"meta": meta or {},
                      "tensors": [[name, list(t.shape), str(t.dtype)] for name, t in tensors.items()]}
        payload = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8).to(self.device)
        self._send(torch.tensor([payload.numel()], dtype=torch.int64, device=self.device))
        self._send(payload)
        for tensor in (tensors or {}).values():
            self._send(tensor)

    def get(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """Receive one message: (tensors, meta), or None at the end of the stream."""
        length = int(self._recv([1], torch.int64).item())
        header = json.loads(bytes(self._recv([length], torch.uint8).cpu().numpy()))
        if header.get("end"):
            return None
        tensors = {name: self._recv(shape, DTYPES[dtype]) for name, shape, dtype in header["tensors"]}
        return tensors, header["meta"]
