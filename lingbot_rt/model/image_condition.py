"""The image-to-video condition: the start image, checked and resized, and the 20 channels
(`mask` 4 + image latent 16) that the DiT reads beside the noisy latents, for any latent frame.

Upstream (LingBot-World `WanI2V.generate`, read for facts only; reference doc section 5):

* the image is resized (bicubic) to the working size and scaled to [-1, 1];
* `y_lat` = VAE(image followed by F - 1 *black* frames): black pixels (-1) go through the
  VAE, not a zero latent;
* the mask is 1 at pixel frame 0 only; frame 0 is repeated 4 times, so the 4 mask channels
  of latent frame 0 are all 1 and every later latent frame's are 0.

Streaming has no F. `ImageCondition` encodes the image with a streaming VAE encoder and
extends `y_lat` lazily, 4 black frames per latent frame, as blocks ask for them
(`StreamingEncoder.encode_black`); this equals encoding the whole clip (`WanVAE.encode` of
image + black frames) frame for frame. The encoder is causal with a finite memory, so its
steps reach a fixed point one by one, the full-resolution ones first, and stop being run;
once all have, every further latent is the last one: the stream repeats it and frees the
encoder's cache, so a session's condition costs nothing after its first blocks. The memory
is long: each of the ~10 temporal convs at the latent rate keeps 2 frames: the `tiny` and
`small` configs (the released layer count) reach the fixed point after 30 latent frames
(10 blocks, 7.5 s at 16 fps), measured.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .vae import SPACE_STRIDE, WanVAE

MASK_CHANNELS = 4
ACCEPTED_MODES = ("RGB", "L")
MAX_UPSCALE = 2.0          # refuse images that would be enlarged more than this


class ImageError(ValueError):
    """The start image cannot be used (unreadable, wrong mode or shape, too small)."""


def _as_pil(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                return opened
        except FileNotFoundError:
            raise ImageError(f"image file {image} does not exist") from None
        except OSError as exc:
            raise ImageError(f"cannot read image {image}: {exc}") from None
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"an image array must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image, "RGB")
    raise ImageError(f"image must be a path, a PIL image or a uint8 [H, W, 3] array, got {type(image).__name__}")


def load_image(image, height: int, width: int) -> torch.Tensor:
    """A start image -> [3, height, width] float32 in [-1, 1].

    Accepts a file path, a PIL image (mode RGB or L), a uint8 [H, W, 3] array, or the tensor a
    previous call returned (passed through, so a caller can check an image once). The image is
    centre-cropped to the target aspect ratio, then resized bicubic (upstream resizes
    without cropping because it picks the size from the image's aspect; a stream has a fixed
    size). An image that would be enlarged more than 2x is refused rather than blurred.
    """
    if height % SPACE_STRIDE or width % SPACE_STRIDE or height <= 0 or width <= 0:
        raise ImageError(f"the frame size must be positive multiples of {SPACE_STRIDE}, got {height}x{width}")
    if isinstance(image, torch.Tensor):          # already loaded (the scheduler checks at admission)
        if image.shape != (3, height, width) or not image.is_floating_point():
            raise ImageError(f"a loaded image must be float [3, {height}, {width}], got {image.dtype} "
                             f"{list(image.shape)}")
        return image
    pil = _as_pil(image)
    if pil.mode not in ACCEPTED_MODES:
        raise ImageError(f"image mode {pil.mode!r} is not supported; give an RGB (or greyscale L) image, "
                         f"e.g. Image.convert('RGB')")
    src_w, src_h = pil.size
    scale = max(width / src_w, height / src_h)          # cover the target, then crop the overhang
    if scale > MAX_UPSCALE:
        raise ImageError(f"image is {src_w}x{src_h} (WxH); the {width}x{height} frame would enlarge it "
                         f"{scale:.1f}x (more than {MAX_UPSCALE:g}x): give at least "
                         f"{int(np.ceil(width / MAX_UPSCALE))}x{int(np.ceil(height / MAX_UPSCALE))}")
    crop_w, crop_h = width / scale, height / scale
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    resized = pil.convert("RGB").resize((width, height), Image.Resampling.BICUBIC,
                                        box=(left, top, left + crop_w, top + crop_h))
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


def with_mask(y_lat: torch.Tensor, starts_clip: bool) -> torch.Tensor:
    """y_lat [..., 16, F, h, w] -> [..., 4 + 16, F, h, w] float32: the I2V mask channels (1 on
    latent frame 0 when `starts_clip`: the frames of the given image) before the latents."""
    mask = torch.zeros(*y_lat.shape[:-4], MASK_CHANNELS, *y_lat.shape[-3:], device=y_lat.device)
    if starts_clip:
        mask[..., 0, :, :] = 1.0
    return torch.cat([mask, y_lat], -4)


class ImageCondition:
    """One session's I2V condition: `block(first, num)` -> [20, num, h, w] (mask, y_lat) for
    latent frames first .. first + num - 1, encoded on demand. Blocks move forward: latents
    before the last requested block are released."""

    def __init__(self, vae: WanVAE, image: torch.Tensor, device: torch.device | str):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ImageError(f"image tensor must be [3, H, W], got {list(image.shape)}")
        self.vae = vae
        self.latent_hw = (image.shape[1] // SPACE_STRIDE, image.shape[2] // SPACE_STRIDE)
        self._encoder = vae.stream_encoder()
        with torch.inference_mode():
            first = self._encoder.encode(image.to(device)[None, :, None])
        self._latents: dict[int, torch.Tensor] = {0: first[0, :, 0]}   # latent frame -> [16, h, w]
        self._next = 1                                                   # next latent frame to encode
        self._steady: torch.Tensor | None = None                         # the repeating black latent

    @property
    def is_steady(self) -> bool:
        """True once the black-frame latents repeat and the encoder is no longer run."""
        return self._steady is not None

    def _latent(self, index: int) -> torch.Tensor:
        if index in self._latents:
            return self._latents[index]
        if index < self._next:
            raise ValueError(f"latent frame {index} of the condition was already released")
        while self._steady is None and index >= self._next:
            with torch.inference_mode():
                latent = self._encoder.encode_black()[0, :, 0]
            if self._encoder.at_fixed_point:
                self._steady, self._encoder = latent, None
            self._latents[self._next] = latent
            self._next += 1
        return self._latents.get(index, self._steady)

    def block(self, first: int, num: int) -> torch.Tensor:
        """[4 + 16, num, h, w] float32: the mask (1 on latent frame 0) and y_lat."""
        if first < 0 or num < 1:
            raise ValueError(f"need first >= 0 and num >= 1, got {first}, {num}")
        y_lat = torch.stack([self._latent(i) for i in range(first, first + num)], 1)
        for index in [i for i in self._latents if i < first]:      # blocks only move forward
            del self._latents[index]
        return with_mask(y_lat, starts_clip=first == 0)
