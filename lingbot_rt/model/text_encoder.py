"""The umT5-XXL text encoder (encoder only), its tokenizer and a prompt-feature cache.

LingBot-World conditions its DiT on umT5-XXL features: each prompt is cleaned, tokenized with
the `google/umt5-xxl` tokenizer (an `</s>` appended, truncated to 512 tokens), encoded, and only
the features of its true tokens are kept; the DiT zero-pads them to `text_len` itself.

What this file holds, top to bottom:
  - `T5Config` and the named configs `umt5-xxl` and `tiny` (`t5_config(name)`);
  - `UMT5Encoder`: upstream's module tree and state-dict keys (Wan `wan/modules/t5.py`,
    `T5Encoder` with `shared_pos=False`), so `models_t5_umt5-xxl-enc-bf16.pth` loads as is;
  - `PromptTokenizer`: upstream's cleaning plus the `tokenizers` library reading the local
    `tokenizer.json` of the release's `google/umt5-xxl/` folder (nothing is downloaded);
  - `load_encoder` / `save_encoder`: strict `.pth` or `.safetensors` loading, built on the meta
    device and materialised once; `make_tiny_tokenizer` for checkpoints made without downloads;
  - `TextEncoder`: tokenizer + encoder + an LRU cache of prompt features.

Upstream facts followed (Wan2.1 `wan/modules/t5.py`, `wan/modules/tokenizers.py`):
  - pre-norm blocks: x + attn(norm1(x)), then x + ffn(norm2(x)); a final norm;
  - T5 RMS norm: no mean subtraction, variance in float32, eps 1e-6, cast back to the weight dtype;
  - attention without 1/sqrt(head_dim) scaling; logits in the model dtype, softmax in float32;
    padded keys get the dtype's most negative value added;
  - umT5: every layer owns its relative position bias (32 buckets, bidirectional, max distance 128);
  - gated FFN: fc2(fc1(x) * gelu_tanh(gate(x))), no biases anywhere;
  - prompts: ftfy + double HTML unescape + whitespace collapse, then the tokenizer with special
    tokens, truncation and padding to 512; features are cut to each prompt's true length.

Deliberate differences, none of which changes a true token's features beyond float rounding:
  - a batch is padded to its longest prompt, not to 512: padded keys are masked, and
    padded positions are cut off anyway;
  - dropout modules are left out (inference only; they hold no weights);
  - ftfy is not a dependency. Of `ftfy.fix_text`'s default fixes, curly quotes are straightened
    here, and full-width forms, ligatures and NFC are covered by the tokenizer's own NFKC
    normalizer; mojibake repair and control-character removal are not done;
  - float16 is refused rather than clamped (umT5 overflows in float16; upstream runs bf16).
"""
from __future__ import annotations

import html
import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from .checkpoint import CheckpointError, load_weights_file, save_weights_file

log = logging.getLogger(__name__)

TEXT_LEN = 512                      # upstream pads/truncates every prompt to 512 tokens
TOKENIZER_FILE = "tokenizer.json"
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"   # ids 0, 1, 2 in every T5 vocabulary


@dataclass(frozen=True)
class T5Config:
    """Sizes of one umT5 encoder. Defaults are umT5-XXL (upstream `umt5_xxl`)."""

    vocab_size: int = 256384        # the tokenizer's ~256.3k pieces, padded for the embedding
    dim: int = 4096
    dim_attn: int = 4096            # num_heads x head_dim (64 x 64)
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32           # relative position buckets, half per direction
    max_distance: int = 128         # distances past this share the last bucket
    eps: float = 1e-6

    def __post_init__(self):
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")
        if self.num_buckets % 4:
            raise ValueError(f"num_buckets must be a multiple of 4 (two directions, exact + log "
                             f"halves), got {self.num_buckets}")

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads


NAMED_T5_CONFIGS: dict[str, T5Config] = {
    "umt5-xxl": T5Config(),
    # For tests: the real module tree, tiny widths; dim 32 is the tiny DiT's text_dim.
    "tiny": T5Config(vocab_size=64, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2,
                     num_buckets=8),
    # The built-in world's encoder (frozen at its random init; dim 64 = the world DiT's text_dim).
    "world": T5Config(vocab_size=256, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2,
                      num_buckets=8),
}


def t5_config(name: str) -> T5Config:
    try:
        return NAMED_T5_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown text encoder config {name!r}; known: {sorted(NAMED_T5_CONFIGS)}") from None


# --- the encoder ---------------------------------------------------------------------------

def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional bucket of each (key - query) distance.

    Half the buckets are for keys after the query. Within a half, distances below
    `max_exact` (a quarter of all buckets) get a bucket each; larger ones are spaced
    logarithmically up to `max_distance` and clipped to the last bucket. Computed in float32
    with upstream's operation order, so the integer buckets agree exactly.
    """
    per_direction = num_buckets // 2
    max_exact = per_direction // 2
    direction = (rel_pos > 0).long() * per_direction
    distance = rel_pos.abs()
    # clamp first: log(0) is never selected, but avoid computing it
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact)
    log_bucket = max_exact + (log_ratio / math.log(max_distance / max_exact)
                              * (per_direction - max_exact)).long()
    log_bucket = log_bucket.clamp(max=per_direction - 1)
    return direction + torch.where(distance < max_exact, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """A learned bias per head and bucket (upstream `T5RelativeEmbedding`, bidirectional)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=self.embedding.weight.device)
        rel_pos = positions[None, :] - positions[:, None]                  # [Lq, Lk]: key - query
        buckets = relative_position_bucket(rel_pos, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)      # [1, H, Lq, Lk]


class RMSNorm(nn.Module):
    """T5 layer norm: scale by the root mean square (float32), no mean, no bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x.to(self.weight.dtype)


class Attention(nn.Module):
    """Multi-head self-attention, T5 style: no scaling, an additive bias per head."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], bias [B, H, L, L] (position bias + key mask) -> [B, L, dim]."""
        b, length = x.shape[:2]
        q, k, v = (proj(x).view(b, length, self.num_heads, self.head_dim) for proj in (self.q, self.k, self.v))
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias               # [B, H, Lq, Lk], unscaled
        probs = logits.float().softmax(dim=-1).type_as(logits)
        out = torch.einsum("bnij,bjnc->binc", probs, v)                    # [B, L, H, head_dim]
        return self.o(out.reshape(b, length, -1))


class FeedForward(nn.Module):
    """Gated GELU (tanh approximation) feed-forward; `gate` is a Sequential as upstream's."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class EncoderBlock(nn.Module):
    """One pre-norm layer with its own relative position bias (umT5: not shared)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps)
        self.ffn = FeedForward(cfg)
        self.pos_embedding = RelativePositionBias(cfg)

    def forward(self, x: torch.Tensor, key_is_pad: torch.Tensor) -> torch.Tensor:
        bias = self.pos_embedding(x.shape[1]).masked_fill(key_is_pad, torch.finfo(x.dtype).min)
        x = x + self.attn(self.norm1(x), bias)
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(nn.Module):
    """umT5 encoder with upstream's parameter names (`T5Encoder`, `shared_pos=False`)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, L] token ids, mask [B, L] (1 = token, 0 = padding) -> features [B, L, dim]."""
        key_is_pad = (mask == 0)[:, None, None, :]                          # [B, 1, 1, Lk]
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, key_is_pad)
        return self.norm(x)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --- prompts and tokens --------------------------------------------------------------------

_CURLY_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_CURLY_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")


def clean_prompt(text: str) -> str:
    """Upstream's 'whitespace' cleaning: HTML entities unescaped twice, curly quotes
    straightened (as ftfy does), runs of whitespace collapsed to one space, ends stripped."""
    text = html.unescape(html.unescape(text))
    text = _CURLY_DOUBLE_QUOTES.sub('"', _CURLY_SINGLE_QUOTES.sub("'", text))
    return re.sub(r"\s+", " ", text).strip()


class PromptTokenizer:
    """Cleaned prompts -> padded token ids and mask, from a local `tokenizer.json`.

    Special tokens are added as upstream does (`</s>` after each prompt), prompts are
    truncated to `text_len` tokens and a batch is padded to its longest prompt (the given
    `tokenizers.Tokenizer` is configured for this in place).
    """

    def __init__(self, tokenizer: Tokenizer, text_len: int = TEXT_LEN):
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise ValueError(f"tokenizer has no {PAD_TOKEN} token")
        tokenizer.enable_truncation(max_length=text_len)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=PAD_TOKEN)
        self.tokenizer, self.text_len = tokenizer, text_len

    @classmethod
    def from_folder(cls, folder: str | Path, text_len: int = TEXT_LEN) -> "PromptTokenizer":
        """The release's `google/umt5-xxl/` folder (or any folder with a `tokenizer.json`)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: tokenizer folder not found")
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{folder}: no {TOKENIZER_FILE} (expected the google/umt5-xxl tokenizer folder)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception for bad files
            raise CheckpointError(f"{path}: unreadable tokenizer ({exc})") from None
        return cls(tokenizer, text_len)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids [B, L] and mask [B, L] (int64), L = the longest prompt's token count."""
        encodings = self.tokenizer.encode_batch(texts)
        for text, encoding in zip(texts, encodings):
            if encoding.overflowing:
                log.warning("prompt truncated to %d tokens: %.60r...", self.text_len, text)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


TINY_WORDS = ("a", "the", "red", "car", "drives", "on", "road", "in", "snow", "forest", "city",
              "at", "night", "camera", "moves", "forward", "left", "right", "walks", "through")


def make_tiny_tokenizer(folder: str | Path, words: tuple[str, ...] = TINY_WORDS) -> Path:
    """Write a small T5-layout `tokenizer.json` (pad 0, eos 1, unk 2; one piece per word of
    `words`, plus every lowercase letter and ',', so any lowercase prompt tokenizes) for tiny
    checkpoints, tests and the built-in world's closed vocabulary."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [","]
    vocab = [(PAD_TOKEN, 0.0), (EOS_TOKEN, 0.0), (UNK_TOKEN, 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{w}", -1.0) for w in dict.fromkeys(words)] + [(c, -5.0) for c in letters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS_TOKEN}",
                                                            special_tokens=[(EOS_TOKEN, 1)])
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    return folder


# --- checkpoints ---------------------------------------------------------------------------

def load_encoder(checkpoint: str | Path, config: str | T5Config = "umt5-xxl", device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.bfloat16) -> UMT5Encoder:
    """Build, validate and load the encoder (`models_t5_umt5-xxl-enc-bf16.pth` or safetensors):
    on the meta device, cast there, materialised once on `device`, weights copied in."""
    if dtype == torch.float16:
        raise ValueError("umT5 overflows in float16: use torch.bfloat16 or torch.float32")
    with torch.device("meta"):
        model = UMT5Encoder(t5_config(config) if isinstance(config, str) else config)
    model = load_weights_file(model, checkpoint, dtype, device, what="text encoder")
    log.info("loaded %s: %.2fB params, %s on %s", checkpoint, model.num_params() / 1e9, dtype, device)
    return model.requires_grad_(False)


def save_encoder(model: UMT5Encoder, path: str | Path) -> Path:
    """Write the state dict in upstream's layout; the suffix picks .pth or .safetensors."""
    return save_weights_file(model, path)


# --- the text encoder the pipeline calls ---------------------------------------------------

class TextEncoder:
    """Prompts -> umT5 features of their true tokens, with an LRU cache keyed by the cleaned
    prompt, so a repeated prompt (a session's, or the negative prompt) costs nothing.

    Features stay on the encoder's device (it may sit on the CPU while the DiT is on a GPU;
    the caller moves them). Cached tensors are shared between calls: treat them as read-only.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: PromptTokenizer, cache_size: int = 64):
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the encoder's embedding "
                             f"only {model.cfg.vocab_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.model, self.tokenizer, self.cache_size = model, tokenizer, cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()   # cleaned prompt -> [len, dim]

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, tokenizer_dir: str | Path, config: str | T5Config = "umt5-xxl",
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                        cache_size: int = 64, text_len: int = TEXT_LEN) -> "TextEncoder":
        tokenizer = PromptTokenizer.from_folder(tokenizer_dir, text_len)
        return cls(load_encoder(checkpoint, config, device, dtype), tokenizer, cache_size)

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """One [num_tokens_i, dim] tensor per prompt, in the model's dtype, `</s>` included."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, got a single string")
        if not prompts:
            raise ValueError("encode() needs at least one prompt, got an empty list")
        texts = [clean_prompt(p) for p in prompts]
        unique = list(dict.fromkeys(texts))
        features = {t: self._cache[t] for t in unique if t in self._cache}
        missing = [t for t in unique if t not in features]
        if missing:
            features.update(zip(missing, self._run(missing)))
        self._remember(features)
        return [features[t] for t in texts]

    def _run(self, texts: list[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenizer(texts)
        with torch.no_grad():
            out = self.model(ids.to(self.device), mask.to(self.device))   # [B, L, dim]
        # clone: a cached prompt must not keep its whole batch alive
        return [row[:n].clone() for row, n in zip(out, mask.sum(dim=1).tolist())]

    def _remember(self, features: dict[str, torch.Tensor]) -> None:
        """Mark these prompts most recently used; evict the least recently used past the size."""
        for text, feature in features.items():
            self._cache[text] = feature
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
