"""umT5 text encoder: upstream keys and size, the T5 maths, masking, cache, loading errors."""
import dataclasses
import math

import pytest
import torch

from lingbot_rt.model.checkpoint import CheckpointError
from lingbot_rt.model.text_encoder import (PromptTokenizer, TextEncoder, UMT5Encoder, clean_prompt, load_encoder,
                                           make_tiny_tokenizer, relative_position_bucket, save_encoder, t5_config)


def make_encoder(seed: int = 0, **overrides) -> UMT5Encoder:
    """A tiny encoder with every weight random, norms and position biases included."""
    torch.manual_seed(seed)
    model = UMT5Encoder(dataclasses.replace(t5_config("tiny"), **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def tiny_files(tmp_path):
    """A tiny checkpoint (.pth, random init) and tokenizer folder, nothing downloaded."""
    checkpoint = save_encoder(make_encoder(), tmp_path / "models_t5_tiny.pth")
    return checkpoint, make_tiny_tokenizer(tmp_path / "google" / "umt5-xxl")


def test_umt5_xxl_has_upstream_keys_shapes_and_size():
    cfg = t5_config("umt5-xxl")
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    sd = model.state_dict()
    block = {"norm1.weight": (4096,), "attn.q.weight": (4096, 4096), "attn.k.weight": (4096, 4096),
             "attn.v.weight": (4096, 4096), "attn.o.weight": (4096, 4096), "norm2.weight": (4096,),
             "ffn.gate.0.weight": (10240, 4096), "ffn.fc1.weight": (10240, 4096), "ffn.fc2.weight": (4096, 10240),
             "pos_embedding.embedding.weight": (32, 64)}
    expected = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    expected |= {f"blocks.{n}.{k}": shape for n in range(24) for k, shape in block.items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    per_block = 4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * 4096 + 32 * 64
    assert model.num_params() == 256384 * 4096 + 24 * per_block + 4096 == 5_680_910_336
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("rel_pos,bucket", [(0, 0), (-1, 1), (1, 17), (-7, 7), (-8, 8), (8, 24), (-12, 9),
                                            (-16, 10), (-32, 12), (32, 28), (-64, 14), (-127, 15), (-128, 15),
                                            (1000, 31), (-1000, 15)])
def test_umt5_position_buckets(rel_pos, bucket):
    # 32 buckets, 16 per direction: distances 0-7 exact, 8-127 log-spaced, then clipped
    assert relative_position_bucket(torch.tensor([rel_pos]), 32, 128).item() == bucket


def test_t5_config_names():
    assert t5_config("tiny").dim == 32
    with pytest.raises(ValueError, match="umt5-xxl"):
        t5_config("t5-xl")


# --- a plain re-statement of the T5 maths ----------------------------------------------------

def reference_bucket(rel_pos: int, num_buckets: int, max_distance: int) -> int:
    half = num_buckets // 2
    bucket = half if rel_pos > 0 else 0
    n, exact = abs(rel_pos), half // 2
    if n < exact:
        return bucket + n
    return bucket + min(half - 1, exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact)))


def reference_rms_norm(x, weight, eps=1e-6):
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def reference_gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_encoder(model: UMT5Encoder, ids, mask):
    cfg, sd = model.cfg, model.state_dict()
    length, heads = ids.shape[1], cfg.num_heads
    x = sd["token_embedding.weight"][ids]
    for n in range(cfg.num_layers):
        w = {k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith(f"blocks.{n}.")}
        table = w["pos_embedding.embedding.weight"]                               # [buckets, heads]
        bias = torch.stack([torch.stack([table[reference_bucket(j - i, cfg.num_buckets, cfg.max_distance)]
                                         for j in range(length)]) for i in range(length)])   # [Lq, Lk, H]
        h = reference_rms_norm(x, w["norm1.weight"])
        q, k, v = (h @ w[f"attn.{p}.weight"].T for p in "qkv")
        out = torch.zeros_like(q)
        for b in range(ids.shape[0]):
            for head in range(heads):
                cols = slice(head * cfg.head_dim, (head + 1) * cfg.head_dim)
                scores = q[b, :, cols] @ k[b, :, cols].T + bias[:, :, head]         # no 1/sqrt(d)
                scores = scores.masked_fill(mask[b][None, :] == 0, float("-inf"))
                out[b, :, cols] = scores.softmax(-1) @ v[b, :, cols]
        x = x + out @ w["attn.o.weight"].T
        h = reference_rms_norm(x, w["norm2.weight"])
        x = x + (reference_gelu_tanh(h @ w["ffn.gate.0.weight"].T) * (h @ w["ffn.fc1.weight"].T)) @ w["ffn.fc2.weight"].T
    return reference_rms_norm(x, sd["norm.weight"])


def test_tiny_encoder_matches_the_t5_maths():
    # max_distance 8 so the 10 tokens reach the log-spaced and the clipped buckets
    model = make_encoder(seed=1, max_distance=8)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    with torch.no_grad():
        ours, ref = model(ids, mask), reference_encoder(model, ids, mask)
    torch.testing.assert_close(ours[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1, :6], ref[1, :6], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_true_tokens():
    model = make_encoder(seed=2)
    ids = torch.randint(3, 64, (1, 7), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([ids, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(ids, torch.ones_like(ids))
        with_pad = model(padded, (padded != 0).long())
    torch.testing.assert_close(with_pad[:, :7], alone, atol=1e-6, rtol=1e-6)


# --- prompts, tokenizer, cache -----------------------------------------------------------------

def test_clean_prompt_follows_upstream():
    assert clean_prompt("  a\t red\n\ncar &amp;amp; \u201croad\u201d \u2018x\u2019 ") == "a red car & \"road\" 'x'"


def test_tokenizer_appends_eos_truncates_and_pads(tmp_path):
    tokenizer = PromptTokenizer.from_folder(make_tiny_tokenizer(tmp_path), text_len=4)
    ids, mask = tokenizer(["a red car drives on the road", "car"])
    assert ids.tolist() == [[4, 6, 7, 1], [7, 1, 0, 0]]       # '</s>' = 1 kept last; '<pad>' = 0
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_encode_returns_true_lengths_batch_independent(tiny_files):
    encoder = TextEncoder.from_checkpoint(*tiny_files, config="tiny", dtype=torch.float32, cache_size=0)
    short, long = encoder.encode(["a red car", "the camera moves forward through the snowy forest at night"])
    assert short.shape == (4, 32) and long.shape[0] > 10 and short.dtype == torch.float32
    alone, = encoder.encode(["a red car"])
    torch.testing.assert_close(short, alone, atol=1e-6, rtol=1e-6)


def test_cache_hit_costs_no_forward_and_evicts_least_recent(tiny_files):
    encoder = TextEncoder.from_checkpoint(*tiny_files, config="tiny", dtype=torch.float32, cache_size=2)
    batches = []
    encoder.model.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    first = encoder.encode(["a red car", "snow", "a  red car "])
    assert batches == [2]                                      # duplicates (after cleaning) encoded once
    assert first[0] is first[2]
    again = encoder.encode(["snow", "a red car"])
    assert batches == [2] and again[0] is first[1] and again[1] is first[0]
    encoder.encode(["city"])                                   # evicts 'snow', the least recently used
    encoder.encode(["a red car", "snow"])
    assert batches == [2, 1, 1]


def test_encode_rejects_empty_and_single_string(tiny_files):
    encoder = TextEncoder.from_checkpoint(*tiny_files, config="tiny")
    with pytest.raises(ValueError, match="at least one prompt"):
        encoder.encode([])
    with pytest.raises(TypeError, match="list of prompts"):
        encoder.encode("a red car")


# --- checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,stored_dtype", [("t5.pth", torch.bfloat16), ("t5.safetensors", torch.float32)])
def test_round_trip(tmp_path, name, stored_dtype):
    model = make_encoder(seed=3).to(stored_dtype)
    loaded = load_encoder(save_encoder(model, tmp_path / name), config="tiny", dtype=torch.float32)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.float(), atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    ids = torch.tensor([[4, 6, 7, 1]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, torch.ones_like(ids)), model.float()(ids, torch.ones_like(ids)))


def test_bf16_encoder_runs_close_to_fp32(tiny_files):
    fp32 = TextEncoder.from_checkpoint(*tiny_files, config="tiny", dtype=torch.float32).encode(["a red car"])[0]
    bf16 = TextEncoder.from_checkpoint(*tiny_files, config="tiny", dtype=torch.bfloat16).encode(["a red car"])[0]
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, atol=0.1, rtol=0.05)


def test_missing_files_are_named(tiny_files, tmp_path):
    checkpoint, tokenizer_dir = tiny_files
    with pytest.raises(CheckpointError, match="tokenizer folder not found"):
        TextEncoder.from_checkpoint(checkpoint, tmp_path / "nope", config="tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        TextEncoder.from_checkpoint(checkpoint, tmp_path / "empty", config="tiny")
    with pytest.raises(CheckpointError, match="missing.pth: text encoder checkpoint not found"):
        TextEncoder.from_checkpoint(tmp_path / "missing.pth", tokenizer_dir, config="tiny")


def test_key_mismatches_are_named(tmp_path):
    state = make_encoder().state_dict()
    state["blocks.1.attn.k.weight"] = torch.zeros(32, 16)
    state["blocks.0.extra.weight"] = torch.zeros(2)
    del state["norm.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "bad.pth", config="tiny")
    message = str(err.value)
    assert "bad.pth" in message and "missing keys: norm.weight" in message
    assert "unexpected keys" in message and "blocks.0.extra.weight" in message
    assert "blocks.1.attn.k.weight (bad.pth: stored [32, 16], model [32, 32])" in message


def test_wrong_config_for_checkpoint_is_a_checkpoint_error(tiny_files):
    with pytest.raises(CheckpointError, match=r"models_t5_tiny.pth(.|\n)*220 missing keys(.|\n)*"
                                              r"mis-shaped keys: blocks.0.attn.k.weight"):
        load_encoder(tiny_files[0], config="umt5-xxl")
