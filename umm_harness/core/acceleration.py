"""GPU paths of the transformers-based backbones: the attention kernel and `torch.compile`.

Every such adapter (Janus-Pro, Emu3) asks this module, so `auto` means the same everywhere:
FlashAttention-2 where it can run (flash-attn importable, a CUDA device, half precision: its
kernels take nothing else), PyTorch's SDPA otherwise. An explicit choice that cannot run is a
`ConfigError` naming the fix before any weights load, not a stack trace from inside transformers.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Literal, get_args

import torch

from umm_harness.core.errors import ConfigError

log = logging.getLogger(__name__)

AttnImplementation = Literal["auto", "flash_attention_2", "sdpa", "eager"]
ATTN_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttnImplementation)
_HALF = ("bfloat16", "float16")


def check_device(device: str, *, here: bool = True) -> str:
    """`device` if torch can run on it (`here`: on this machine, else anywhere: a recipe written for a
    GPU box validates on a laptop); a `ConfigError` naming what is missing otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device '{device}' is not a device torch knows (cpu, cuda, cuda:<n>, mps)") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{device}': the harness runs on cpu, cuda or mps")
    if not here:
        return device
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{device}': no CUDA GPU is visible here (torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device '{device}': only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}': MPS is not available here")
    return device


def flash_attn_installed() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001 - a wheel built for another CUDA/torch fails with OSError, not ImportError
        return False
    return True


def _cuda(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def select_attn_implementation(requested: str, *, device: str, dtype: str) -> str:
    """The `attn_implementation` to pass to `from_pretrained` for this device and dtype."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {requested!r}")
    if requested == "auto":
        flash = dtype in _HALF and _cuda(device) and flash_attn_installed()
        chosen = "flash_attention_2" if flash else "sdpa"
        log.info("attention: %s (auto, on %s in %s)", chosen, device, dtype)
        return chosen
    if requested == "flash_attention_2":
        if not flash_attn_installed():
            raise ConfigError("attn_implementation flash_attention_2: flash-attn is not installed; "
                              "install flash-attn: pip install flash-attn --no-build-isolation")
        if not _cuda(device):
            raise ConfigError(f"attn_implementation flash_attention_2 needs a CUDA GPU (device is '{device}', "
                              f"CUDA available: {torch.cuda.is_available()})")
        if dtype not in _HALF:
            raise ConfigError(f"attn_implementation flash_attention_2 needs dtype bfloat16 or float16, got {dtype}")
    log.info("attention: %s", requested)
    return requested


def compile_forward(module: torch.nn.Module, device: str) -> None:
    """Compile `module`'s forward in place with `torch.compile` (default mode); its weights and
    state dict stay those of the plain module, so saving and training are unaffected."""
    if not device.startswith("cuda") and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++")):
        raise ConfigError("compile on CPU needs a C++ compiler (g++) on PATH, or leave compile off")
    module.compile()
    log.info("compiled %s.forward with torch.compile", type(module).__name__)
