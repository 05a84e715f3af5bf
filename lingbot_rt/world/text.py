"""The built-in world's prompts: a closed vocabulary, so a small tokenizer covers them whole.

The encoder is umT5's architecture at the `world` size, frozen at its seeded random init: it
only has to map each prompt to distinct, stable features, which the DiT learns to read.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch

from ..model.config import model_config
from ..model.text_encoder import PromptTokenizer, TextEncoder, UMT5Encoder, make_tiny_tokenizer, t5_config
from .textures import FLOOR_PATTERNS, LANDMARK_PATTERNS, PALETTE, SKIES, WALL_PATTERNS

TEXT_CONFIG = "world"
TEXT_LEN = model_config("world").text_len
TEMPLATE_WORDS = ("a", "an", "first-person", "walk", "through", "rooms", "joined", "by", "corridors", "maze",
                  "of", "narrow", "with", "walls", "colourful", "pillars", "and", "painted", "wall", "panels",
                  "floor", "under", "sky")


def world_words() -> tuple[str, ...]:
    phrases = [*PALETTE, *WALL_PATTERNS.values(), *LANDMARK_PATTERNS.values(), *FLOOR_PATTERNS.values(), *SKIES]
    words = [w for phrase in phrases for w in re.split(r"\s+", phrase)]
    return tuple(dict.fromkeys([*TEMPLATE_WORDS, *words]))


def make_world_tokenizer(folder: str | Path) -> Path:
    return make_tiny_tokenizer(folder, world_words())


def make_world_text_encoder(seed: int = 0) -> UMT5Encoder:
    torch.manual_seed(seed)
    return UMT5Encoder(t5_config(TEXT_CONFIG)).eval().requires_grad_(False)


def world_text_encoder(device: torch.device | str = "cpu") -> TextEncoder:
    """The encoder and tokenizer the world's DiT reads prompts through."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = PromptTokenizer.from_folder(make_world_tokenizer(folder), TEXT_LEN)
    return TextEncoder(make_world_text_encoder().to(device), tokenizer)
