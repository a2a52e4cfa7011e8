"""What lets BAGEL's unmodified code (ByteDance-Seed/Bagel @ 056b5fd51a88) run without CUDA,
without torchvision and on transformers 5, installed by the adapter at import time. Nothing here
edits or copies an upstream file; each piece is as narrow as the one call it replaces.

- `flash_attn_varlen_func` (flash-attention's packed variable-length kernel, CUDA only) is what
  `modeling/bagel/qwen2_navit.py` and `siglip_navit.py` import at module level. When flash-attn
  is not importable, `upstream_import_window` puts a stand-in `flash_attn` module in
  `sys.modules` only while BAGEL's modules import, then removes it, so nothing else (transformers'
  own flash-attn checks included) ever sees it. The stand-in, `varlen_attention`, computes the
  same thing per packed sequence with PyTorch's SDPA in float32 (flash-attn's semantics:
  grouped-query heads, causal masks aligned to the bottom-right when queries are fewer than keys).
- Upstream runs every call under `torch.autocast("cuda", bfloat16)`, which does nothing on a CPU;
  `autocast_for` gives the CPU equivalent around each call.
- `data/transforms.py` imports torchvision and OpenCV for a resize + normalise;
  `ImageTransform` here applies the same rule with PIL and numpy (torchvision's resize of a PIL
  image is PIL's bicubic resize, so the pixels match).
- transformers 5 dropped the `"default"` entry of `ROPE_INIT_FUNCTIONS` and the implicit
  `pad_token_id` of configs; `patch_for_transformers_5` adds the first to BAGEL's own
  `modeling.qwen2.modeling_qwen2` module namespace (not transformers'), and `config_defaults`
  sets the second on BAGEL's config objects. Under BAGEL's pinned transformers 4.49 neither acts.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import logging
import sys
import types
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                     dropout_p: float = 0.0, softmax_scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """flash-attn's `flash_attn_varlen_func` for inference: `q` (total_q, heads, dim), `k`/`v`
    (total_k, kv_heads, dim), sequence i spanning `cu_seqlens_*[i]:cu_seqlens_*[i+1]`; the output
    has `q`'s shape and dtype. A query row that may see no key (causal, more queries than keys)
    is zero, as flash-attn returns it."""
    if dropout_p:
        raise ValueError("the CPU stand-in for flash_attn_varlen_func is for inference: dropout_p must be 0")
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads")
    out = q.new_zeros(q.shape)
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(starts_q, starts_q[1:]), zip(starts_k, starts_k[1:])):
        if q1 == q0 or k1 == k0:
            continue
        query = q[q0:q1].float().transpose(0, 1)  # (heads, len_q, dim)
        key = k[k0:k1].float().transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        value = v[k0:k1].float().transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        mask = None
        if causal:  # query i sees keys up to i + (len_k - len_q): the bottom-right alignment
            offset = (k1 - k0) - (q1 - q0)
            mask = torch.arange(k1 - k0)[None, :] <= torch.arange(q1 - q0)[:, None] + offset
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=softmax_scale)
        if mask is not None:
            attended = attended.masked_fill(~mask.any(dim=1)[None, :, None], 0.0)
        out[q0:q1] = attended.transpose(0, 1).to(q.dtype)
    return out


def flash_attn_importable() -> bool:
    try:
        return importlib.util.find_spec("flash_attn") is not None
    except ValueError:
        return False


@contextlib.contextmanager
def upstream_import_window() -> Iterator[bool]:
    """While BAGEL's modules import: a stand-in `flash_attn` if the real one is absent. Yields
    whether the stand-in is in place; afterwards `sys.modules` holds no `flash_attn` of ours."""
    if flash_attn_importable() or "flash_attn" in sys.modules:
        yield False
        return
    stand_in = types.ModuleType("flash_attn")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    stand_in.__doc__ = "umm-harness: CPU/SDPA stand-in for flash_attn_varlen_func while BAGEL imports (bagel_cpu)"
    stand_in.flash_attn_varlen_func = varlen_attention
    sys.modules["flash_attn"] = stand_in
    try:
        yield True
    finally:
        if sys.modules.get("flash_attn") is stand_in:
            del sys.modules["flash_attn"]


def _default_rope(config, device=None, seq_len=None, **_) -> tuple[torch.Tensor, float]:
    """Plain RoPE inverse frequencies, as transformers 4.x's "default" entry computes them."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim
    return 1.0 / (config.rope_theta ** exponents), 1.0


def patch_for_transformers_5() -> bool:
    """Give BAGEL's qwen2 module the "default" RoPE initialiser transformers 5 removed; True if it was needed."""
    module = sys.modules.get("modeling.qwen2.modeling_qwen2")
    if module is None or "default" in module.ROPE_INIT_FUNCTIONS:
        return False
    module.ROPE_INIT_FUNCTIONS = {**module.ROPE_INIT_FUNCTIONS, "default": _default_rope}
    return True


def config_defaults(config) -> None:
    """Attributes transformers 4 configs always had and BAGEL's model code reads."""
    if not hasattr(config, "pad_token_id"):
        config.pad_token_id = None


def autocast_for(device: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CPU (upstream enters the CUDA one itself, which is inert on a CPU)."""
    if torch.device(device).type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class BoundedResize:
    """Scale an image so its long side is at most `max_size` and its short side at least
    `min_size` (the long side wins), both sides multiples of `stride`, at most `max_pixels`
    pixels per image: the rule of upstream's `MaxLongEdgeMinShortEdgeResize`, on PIL images."""

    def __init__(self, max_size: int, min_size: int, stride: int, max_pixels: int):
        self.max_size, self.min_size, self.stride, self.max_pixels = max_size, min_size, stride, max_pixels

    def _scaled(self, width: int, height: int, scale: float) -> tuple[int, int]:
        return tuple(max(self.stride, int(round(round(side * scale) / self.stride) * self.stride))
                     for side in (width, height))

    def size_for(self, width: int, height: int, images: int = 1) -> tuple[int, int]:
        scale = max(min(self.max_size / max(width, height), 1.0), self.min_size / min(width, height))
        width, height = self._scaled(width, height, scale)
        if width * height > self.max_pixels / images:
            width, height = self._scaled(width, height, self.max_pixels / images / (width * height))
        if max(width, height) > self.max_size:
            width, height = self._scaled(width, height, self.max_size / max(width, height))
        return width, height

    def __call__(self, image: Image.Image, img_num: int = 1) -> Image.Image:
        size = self.size_for(*image.size, images=img_num)
        return image if size == image.size else image.resize(size, Image.BICUBIC)


class ImageTransform:
    """Upstream's `data.transforms.ImageTransform` without torchvision: resize, then a (3, H, W)
    float tensor scaled to [-1, 1] (mean 0.5, std 0.5). The inferencer also calls `.resize_transform`."""

    def __init__(self, max_image_size: int, min_image_size: int, image_stride: int, max_pixels: int = 14 * 14 * 9 * 1024):
        self.stride = image_stride
        self.resize_transform = BoundedResize(max_image_size, min_image_size, image_stride, max_pixels)

    def __call__(self, image: Image.Image, img_num: int = 1) -> torch.Tensor:
        pixels = np.asarray(self.resize_transform(image.convert("RGB"), img_num=img_num), dtype=np.float32)
        return (torch.from_numpy(pixels / 255.0).permute(2, 0, 1) - 0.5) / 0.5
