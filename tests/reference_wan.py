"""A plain, float64, one-sample re-statement of upstream `WanModel.forward` (LingBot-World
U0 model.py), written from the maths and independent of `lingbot_rt.model.dit`.

Attention is described by a *plan*: a list of groups (query frames, query positions, key
frames, key positions[, pooled key frames: their roped K and V averaged over `memory_pool`
patches of the token grid before attention]). One group over all frames at absolute positions is upstream's
bidirectional forward; one group per block with earlier frames is block-causal; a rolling
sink + window is expressed by which key frames each block sees and where they sit.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rope_params(max_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float64),
                        1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return torch.polar(torch.ones_like(freqs), freqs)


def rope_table(head_dim: int, max_len: int) -> list[torch.Tensor]:
    d = head_dim
    return [rope_params(max_len, d - 4 * (d // 6)), rope_params(max_len, 2 * (d // 6)),
            rope_params(max_len, 2 * (d // 6))]


def rope(x, frame_pos, grid_hw, table):
    """x [F*h*w, n, d] of frames at time positions frame_pos [F] (complex multiply, as upstream)."""
    h, w = grid_hw
    f = len(frame_pos)
    xc = torch.view_as_complex(x.reshape(f * h * w, x.shape[1], -1, 2).contiguous())
    ft, fh, fw = table
    freqs = torch.cat([ft[torch.tensor(frame_pos)].view(f, 1, 1, -1).expand(f, h, w, -1),
                       fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], -1).reshape(f * h * w, 1, -1)
    return torch.view_as_real(xc * freqs).flatten(2)


def sinusoidal(dim, t):
    half = dim // 2
    s = torch.outer(t.double(), torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half))
    return torch.cat([torch.cos(s), torch.sin(s)], 1)


def lin(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def rms(sd, name, x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * sd[name + ".weight"]


def attend(q, k, v):
    """q [Lq, n, d], k/v [Lk, n, d]: softmax(q k^T / sqrt(d)) v."""
    scores = torch.einsum("qnd,knd->nqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("nqk,knd->qnd", scores.softmax(-1), v)


def pool_frames(t, grid_hw, memory_pool):
    """[frames * H * W, n, d] -> [frames * H/ph * W/pw, n, d]: each frame's patch means."""
    (h, w), n, d = grid_hw, t.shape[1], t.shape[2]
    grid = t.reshape(-1, h, w, n * d).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, memory_pool)
    return pooled.permute(0, 2, 3, 1).reshape(-1, n, d)


def reference_forward(model, x, t, context, y, control, plan, max_positions: int = 1024,
                      memory_pool: tuple[int, int] = (1, 1)):
    """One sample. x [16, F, H, W], t [F] per latent frame, context [n, text_dim],
    y [20, F, H, W], control [C, F, H, W] or None. Returns [16, F, H, W] float64."""
    cfg = model.cfg
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    dim, n_heads, d, eps = cfg.dim, cfg.num_heads, cfg.head_dim, cfg.eps
    table = rope_table(d, max_positions)
    # patch embedding
    inp = torch.cat([x, y], 0).double()[None]
    tok = F.conv3d(inp, sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=cfg.patch_size)[0]
    f, h, w = tok.shape[1:]
    tpf = h * w
    xs = tok.flatten(1).T                                       # [L, dim]
    # time: per frame, repeated per token
    t_tok = t.double().repeat_interleave(tpf)
    e = lin(sd, "time_embedding.2", F.silu(lin(sd, "time_embedding.0", sinusoidal(cfg.freq_dim, t_tok))))
    e0 = lin(sd, "time_projection.1", F.silu(e)).view(-1, 6, dim)
    # text: zero-padded to text_len, then the MLP, never masked
    ctx = F.pad(context.double(), (0, 0, 0, cfg.text_len - context.shape[0]))
    ctx = lin(sd, "text_embedding.2", F.gelu(lin(sd, "text_embedding.0", ctx), approximate="tanh"))
    # camera: '1 c (f c1) (h c2) (w c3) -> 1 (f h w) (c c1 c2 c3)'
    cam = None
    if control is not None:
        c_ch = control.shape[0]
        p = control.double().reshape(c_ch, f, 1, h, 2, w, 2).permute(1, 3, 5, 0, 2, 4, 6).reshape(f * h * w, -1)
        cam = lin(sd, "patch_embedding_wancamctrl", p)
        cam = cam + lin(sd, "c2ws_hidden_states_layer2", F.silu(lin(sd, "c2ws_hidden_states_layer1", cam)))

    def frames_tokens(frames):
        return torch.cat([torch.arange(fr * tpf, (fr + 1) * tpf) for fr in frames])

    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        m = (sd[b + "modulation"] + e0).unbind(1)
        a = F.layer_norm(xs, (dim,), eps=eps) * (1 + m[1]) + m[0]
        q = rms(sd, b + "self_attn.norm_q", lin(sd, b + "self_attn.q", a), eps).view(-1, n_heads, d)
        k = rms(sd, b + "self_attn.norm_k", lin(sd, b + "self_attn.k", a), eps).view(-1, n_heads, d)
        v = lin(sd, b + "self_attn.v", a).view(-1, n_heads, d)
        out = torch.zeros_like(q)
        for q_frames, q_pos, k_frames, k_pos, *pooled in plan:
            qi = frames_tokens(q_frames)
            keys, values = [], []
            for frame, pos in zip(k_frames, k_pos):
                ki = frames_tokens([frame])
                kf, vf = rope(k[ki], [pos], (h, w), table), v[ki]
                if pooled and frame in pooled[0]:
                    kf, vf = pool_frames(kf, (h, w), memory_pool), pool_frames(vf, (h, w), memory_pool)
                keys.append(kf)
                values.append(vf)
            out[qi] = attend(rope(q[qi], q_pos, (h, w), table), torch.cat(keys), torch.cat(values))
        xs = xs + lin(sd, b + "self_attn.o", out.flatten(1)) * m[2]
        if cam is not None:
            hc = lin(sd, b + "cam_injector_layer2", F.silu(lin(sd, b + "cam_injector_layer1", cam))) + cam
            xs = (1 + lin(sd, b + "cam_scale_layer", hc)) * xs + lin(sd, b + "cam_shift_layer", hc)
        a = F.layer_norm(xs, (dim,), sd[b + "norm3.weight"], sd[b + "norm3.bias"], eps)
        qc = rms(sd, b + "cross_attn.norm_q", lin(sd, b + "cross_attn.q", a), eps).view(-1, n_heads, d)
        kc = rms(sd, b + "cross_attn.norm_k", lin(sd, b + "cross_attn.k", ctx), eps).view(-1, n_heads, d)
        vc = lin(sd, b + "cross_attn.v", ctx).view(-1, n_heads, d)
        xs = xs + lin(sd, b + "cross_attn.o", attend(qc, kc, vc).flatten(1))
        a = F.layer_norm(xs, (dim,), eps=eps) * (1 + m[4]) + m[3]
        xs = xs + lin(sd, b + "ffn.2", F.gelu(lin(sd, b + "ffn.0", a), approximate="tanh")) * m[5]
    shift, scale = (sd["head.modulation"] + e[:, None]).unbind(1)
    out = lin(sd, "head.head", F.layer_norm(xs, (dim,), eps=eps) * (1 + scale) + shift)
    out = out.view(f, h, w, 1, 2, 2, cfg.out_dim)
    return torch.einsum("fhwpqrc->cfphqwr", out).reshape(cfg.out_dim, f, 2 * h, 2 * w)


# ---- plans --------------------------------------------------------------------------------
def bidirectional_plan(num_frames):
    frames = list(range(num_frames))
    return [(frames, frames, frames, frames)]


def block_causal_plan(num_frames, block):
    plan = []
    for start in range(0, num_frames, block):
        q = list(range(start, min(start + block, num_frames)))
        k = list(range(0, q[-1] + 1))
        plan.append((q, q, k, k))
    return plan


def sink_window_plan(num_frames, block, sink, window, full_frames=None):
    """What a rolling cache shows each block: the first `sink` frames, the last `window`
    frames before the block, the block; positions relative (sink, then window, then block).
    With `full_frames`, the key frames older than the latest `full_frames` are pooled."""
    plan = []
    full = window if full_frames is None else full_frames
    for start in range(0, num_frames, block):
        q = list(range(start, min(start + block, num_frames)))
        sink_frames = list(range(min(start, sink)))
        window_frames = list(range(max(sink, start - window), start))
        keys = sink_frames + window_frames
        k_pos = list(range(len(keys)))
        q_pos = [len(keys) + j for j in range(len(q))]
        plan.append((q, q_pos, keys + q, k_pos + q_pos, {f for f in keys if f < start - full}))
    return plan
