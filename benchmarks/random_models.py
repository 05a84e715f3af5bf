"""Random-weight models for benchmarks: built on the meta device, materialised once in dtype."""
from __future__ import annotations

import torch

from lingbot_rt.model import CausalWanModel, model_config


def random_dit(config: str, dtype: torch.dtype, device) -> CausalWanModel:
    """A DiT of a named config with weights scaled like a trained net's (N(0, 0.02), norms 1)."""
    with torch.device("meta"):
        model = CausalWanModel(model_config(config))
    model = model.to(dtype).to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.zero_()
        for m in model.modules():
            if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 1 and "Norm" in type(m).__name__:
                m.weight.fill_(1.0)
    return model.eval()
