"""What the adapters that run a user's checkout of a model's own code share (MMaDA, Show-o, Emu3.5):
the checkout they were written against, a small JSON of the sizes their prompts and decoders need
(saved beside the weights, with the checkout the instance ran on), hub folders, dtypes and VQ weights."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from model_flavors.upstream_checkout import UpstreamCheckout
from umm_harness.core.backbone import Backbone

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(dtype: str):
    """The torch dtype named `dtype`, or a ValueError naming the choices."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def local_folder(source: str, revision: str | None = None) -> Path:
    """`source` itself if it is a folder, else its hub snapshot."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision))


def save_state(module, file: Path) -> None:
    """A module's weights as one safetensors file (the VQ decoders have no save_pretrained)."""
    from safetensors.torch import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(file))


def checkout_requirement(upstream: UpstreamCheckout) -> str:
    """The line `umm models list` shows for the checkout an adapter needs."""
    return f"a checkout of {upstream.repo} at {upstream.commit[:12]}"


class UpstreamBackbone(Backbone):
    """An adapter over a checkout: `sizes` is a dataclass with a `repo_path` field, saved as `sizes_file`."""

    route: ClassVar[str] = "upstream"
    upstream: ClassVar[UpstreamCheckout]
    sizes_file: ClassVar[str]
    sizes: Any

    @classmethod
    def saved_sizes(cls, folder: Path, default: Any, repo_path: str | Path | None) -> tuple[Any, Path, bool]:
        """(sizes, checkout, whether `folder` is one this adapter saved): the saved sizes or `default`,
        their checkout the one given, else the environment's, else the one they were saved with."""
        saved = (Path(folder) / cls.sizes_file).is_file()
        sizes = type(default)(**json.loads((Path(folder) / cls.sizes_file).read_text())) if saved else default
        repo = cls.upstream.resolve(repo_path or os.environ.get(cls.upstream.env) or sizes.repo_path)
        sizes.repo_path = str(repo)
        return sizes, repo, saved

    @property
    def repo_path(self) -> Path | None:
        """The checkout this instance runs on (the flavor bundles it)."""
        return Path(self.sizes.repo_path) if self.sizes.repo_path else None

    def save_sizes(self, path: Path) -> None:
        (Path(path) / self.sizes_file).write_text(json.dumps(asdict(self.sizes), indent=2) + "\n")
