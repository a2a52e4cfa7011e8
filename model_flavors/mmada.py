"""MMaDA (Gen-Verse/MMaDA-8B-Base, -MixCoT): understanding and text-to-image on the authors' code.

MMaDA is a masked discrete-diffusion language model (LLaDA) that writes text and MAGVIT-v2
image tokens alike. Nothing of it is in transformers or diffusers, so this adapter imports the
user's checkout of https://github.com/Gen-Verse/MMaDA (`repo_path` option or `UMM_MMADA_REPO`),
written against commit 3cdb8709635b, and calls its own entry points the way its
`inference_t2i.py` / `inference_mmu.py` do:

- `MMadaModelLM.t2i_generate` (MaskGIT decoding, cosine mask schedule, CFG) on a prompt built by
  `training.prompting_utils.UniversalPrompting(..., use_reserved_token=True)` in its `t2i_gen`
  format; the codes decode through `MAGVITv2.decode_code`;
- `MMadaModelLM.mmu_generate` (block-wise low-confidence remasking) on
  `<|mmu|><|soi|> image codes <|eoi|> chat-templated question`.

Two narrowly scoped accommodations, none of which edits the checkout:
- MMaDA's `models/modeling_utils.py` is a copy of an old diffusers `ModelMixin` that imports
  names diffusers ≥0.35 removed (`FLAX_WEIGHTS_NAME`, ...), which takes `MAGVITv2` down with it.
  MAGVITv2 only needs the base classes, so the installed diffusers' `ModelMixin`, `ConfigMixin`
  and `register_to_config` stand in for that one module. The rest of the checkout runs as is.
- The checkout's packages are imported under private names (`_umm_mmada.models`, ...): its
  top-level `models` and `training` would clash with other code (this project has `training`).

Upstream decodes a whole batch from one generator and feeds images in one at a time, so requests
run one at a time, each with its own `torch.Generator` seeded from the request: a sample's
image never depends on its batch neighbours.

Defaults (README, `inference_t2i.py`, `inference_mmu.py`; TorchUMM's adapter agrees): generation
CFG 3.5, 15 timesteps, temperature 1.0, cosine schedule, 512 px (1024 codes, 8192-entry
codebook); understanding greedy, up to 512 new tokens, steps = tokens / 2, block length =
tokens / 4 (steps rounded up to a multiple of the block count, as TorchUMM does).

A saved model holds `lm/` (MMadaModelLM + tokenizer), `vq/` (MAGVITv2 weights and, for a
non-default size, its encoder/decoder arguments) and `umm_mmada.json` (sizes, checkout path).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from model_flavors.upstream_checkout import (
    UpstreamCheckout,
    diffusers_modelmixin_standin,
    import_or_explain,
    module_from_file,
    private_package,
)
from model_flavors.upstream_backbone import UpstreamBackbone, checkout_requirement, local_folder, save_state, torch_dtype
from umm_harness.core.backbone import ModelInfo, require_safetensors
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind

log = logging.getLogger(__name__)

UPSTREAM = UpstreamCheckout(
    name="MMaDA", repo="https://github.com/Gen-Verse/MMaDA", commit="3cdb8709635beb29f66e4e23cd66060872ac3996",
    markers=("models/modeling_mmada.py", "models/modeling_magvitv2.py", "training/prompting_utils.py"),
    env="UMM_MMADA_REPO",
)
REQUIREMENTS = ("torch==2.13.0", "transformers>=5.0,<6", "diffusers>=0.35", "omegaconf>=2.3", "einops>=0.7",
                "jaxtyping>=0.2", "typeguard>=4")
REFERENCE_FILE = "umm_mmada.json"
VQ_HUB_ID = "showlab/magvitv2"
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")
_ALIAS = "_umm_mmada"


@dataclass
class MmadaSizes:
    """What the prompt format and the decoders need to know (`umm_mmada.json`)."""

    max_text_len: int = 512  # text tokens of a t2i prompt (config dataset.preprocessing.max_seq_length)
    resolution: int = 512
    num_vq_tokens: int = 1024
    codebook_size: int = 8192
    mask_token_id: int = 126336
    # MAGVITv2 encoder/decoder/quantizer arguments; empty = upstream's hard-coded 8192-code model.
    vq_args: dict[str, Any] = field(default_factory=dict)
    repo_path: str | None = None


def import_upstream(repo: Path) -> SimpleNamespace:
    """MMaDA's classes from `repo`, with diffusers' ModelMixin standing in for its vendored copy."""
    private_package(_ALIAS, repo)
    private_package(f"{_ALIAS}.models", repo / "models")
    diffusers_modelmixin_standin(f"{_ALIAS}.models.modeling_utils", REQUIREMENTS)
    names = {"magvit": "modeling_magvitv2", "llada_config": "configuration_llada", "mmada": "modeling_mmada",
             "sampling": "sampling"}
    api = {key: import_or_explain(f"{_ALIAS}.models.{module}", UPSTREAM, REQUIREMENTS) for key, module in names.items()}
    api["prompting"] = module_from_file(f"{_ALIAS}.prompting_utils", repo / "training" / "prompting_utils.py")
    api["LM"] = _loadable(api["mmada"].MMadaModelLM)
    return SimpleNamespace(**api)


def _loadable(upstream_lm: type) -> type:
    """MMadaModelLM as transformers 5's `from_pretrained` needs it: LLaDA's constructor never calls
    `post_init()`, where transformers 5 records the tied-weight map it reads when loading; its
    `tie_weights()` takes no keywords while transformers 5 passes some; and its forward reads
    `config.use_cache`, which transformers 5 does not restore. This subclass records the map the
    same way, drops the keywords and defaults `use_cache` to False; nothing else changes."""

    class MMadaModelLM(upstream_lm):
        def __init__(self, config, *args, **kwargs):
            if not hasattr(config, "use_cache"):  # transformers 5 does not keep it from the saved config
                config.use_cache = False
            super().__init__(config, *args, **kwargs)
            if not hasattr(self, "all_tied_weights_keys"):
                self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)

        def tie_weights(self, *args, **kwargs):
            return super().tie_weights()

    MMadaModelLM.__qualname__ = f"loadable {upstream_lm.__module__}.{upstream_lm.__qualname__}"
    return MMadaModelLM


def build_vq(api: SimpleNamespace, vq_args: dict[str, Any]):
    """MAGVITv2 with upstream's defaults, or with the given encoder/decoder/quantizer arguments
    (its constructor takes none, so a smaller one is assembled from the same upstream blocks)."""
    if not vq_args:
        return api.magvit.MAGVITv2()
    with torch.device("meta"):
        vq = api.magvit.MAGVITv2()
    vq.encoder = api.magvit.VQGANEncoder(**vq_args["encoder"])
    vq.decoder = api.magvit.VQGANDecoder(**vq_args["decoder"])
    vq.quantize = api.magvit.LFQuantizer(**vq_args["quantizer"])
    return vq


def to_vq_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """Upstream's `image_transform`: bicubic resize of the short side, centre crop, scale to [-1, 1]
    (written with PIL: torchvision does not run beside the CPU torch here)."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (array - 0.5) / 0.5


class Mmada(UpstreamBackbone):
    key: ClassVar[str] = "mmada"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    requires: ClassVar[tuple[str, ...]] = (checkout_requirement(UPSTREAM),
                                           "diffusers>=0.35", "omegaconf", "einops", "jaxtyping", "typeguard")
    hub_ids: ClassVar[tuple[str, ...]] = ("Gen-Verse/MMaDA-8B-Base", "Gen-Verse/MMaDA-8B-MixCoT")
    notes: ClassVar[str] = "masked discrete diffusion for text and MAGVIT-v2 image tokens (VQ: showlab/magvitv2)"
    # Its environment beside the harness's base: upstream pins (transformers 4.46, diffusers 0.32.2)
    # adjusted to what runs here (checked: transformers 5.25, diffusers 0.42.1, the CPU torch 2.13.0 wheel).
    pip_requirements: ClassVar[tuple[str, ...]] = REQUIREMENTS[2:]  # torch and transformers: the base pins
    upstream: ClassVar[UpstreamCheckout] = UPSTREAM
    sizes_file: ClassVar[str] = REFERENCE_FILE

    def __init__(self, api: SimpleNamespace, lm, vq, tokenizer, sizes: MmadaSizes, info: ModelInfo):
        self.api, self.lm, self.vq, self.tokenizer = api, lm.eval(), vq.eval(), tokenizer
        self.sizes, self.info = sizes, info
        tokenizer.padding_side = "left"
        self.prompting = api.prompting.UniversalPrompting(
            tokenizer, max_text_len=sizes.max_text_len, special_tokens=SPECIAL_TOKENS, ignore_id=-100,
            cond_dropout_prob=0.1, use_reserved_token=True,
        )

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
             repo_path: str | Path | None = None, vq_source: str = VQ_HUB_ID, allow_pickle: bool = False) -> Mmada:
        """`source`: a folder this adapter saved (it names its LM, VQ and sizes), or a MMaDA LM checkpoint
        (hub id or folder) used with the MAGVITv2 at `vq_source` and the published sizes."""
        dtype_ = torch_dtype(dtype)
        sizes, repo, saved = cls.saved_sizes(Path(source), MmadaSizes(), repo_path)
        lm_source = str(Path(source) / "lm") if saved else source
        vq_source = str(Path(source) / "vq") if saved else vq_source
        api = import_upstream(repo)
        require_safetensors(lm_source, allow_pickle)
        from transformers import AutoTokenizer

        lm = api.LM.from_pretrained(lm_source, revision=revision, dtype=dtype_,
                                   use_safetensors=not allow_pickle).to(device)
        tokenizer = AutoTokenizer.from_pretrained(lm_source, revision=revision)
        vq = build_vq(api, sizes.vq_args)
        vq.load_state_dict(_vq_state_dict(local_folder(vq_source), allow_pickle), strict=True)
        vq = vq.to(device)
        return cls(api, lm, vq, tokenizer, sizes, ModelInfo(backbone=cls.key, source=source, revision=revision,
                                                             dtype=dtype))

    def save_pretrained(self, path: Path) -> None:
        path = Path(path)
        self.lm.save_pretrained(path / "lm")
        self.tokenizer.save_pretrained(path / "lm")
        save_state(self.vq, path / "vq" / "model.safetensors")
        self.save_sizes(path)

    # -- requests -----------------------------------------------------------------------------

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "generation":
            return InferenceParams(seed=0, guidance_scale=3.5, steps=15, temperature=1.0,
                                   image_size=self.sizes.resolution)
        return InferenceParams(seed=0, max_new_tokens=512, temperature=0.0)

    @property
    def text_vocab(self) -> int:
        return len(self.prompting.text_tokenizer)

    @torch.inference_mode()
    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        params = [self._generation_params(r) for r in requests]
        results = []
        for request, p in zip(requests, params):
            start = time.perf_counter()
            codes = self.image_codes(request.prompt or "", p)
            pixels = self.vq.decode_code(codes.clamp(0, self.sizes.codebook_size - 1))
            array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).cpu()
            results.append(InferenceResult(images=[Image.fromarray(array.numpy())], params=p,
                                           elapsed_s=time.perf_counter() - start))
        return results

    def _generation_params(self, request: InferenceRequest) -> InferenceParams:
        p = request.params.merged_over(self.default_params("generation"))
        if p.image_size != self.sizes.resolution:
            raise ValueError(f"mmada generates {self.sizes.resolution}px images only (its VQ's {self.sizes.num_vq_tokens} "
                             f"codes); got image_size={p.image_size}")
        return p.model_copy(update={"image_guidance_scale": None, "max_new_tokens": None})

    def image_codes(self, prompt: str, params: InferenceParams) -> torch.Tensor:
        """MaskGIT decoding by the upstream `t2i_generate`, from a fully masked image."""
        device = self.lm.device
        masked = torch.full((1, self.sizes.num_vq_tokens), self.sizes.mask_token_id, dtype=torch.long, device=device)
        ids, mask = self.prompting(([prompt], masked), "t2i_gen")
        uncond_ids, uncond_mask = self.prompting(([""], masked.clone()), "t2i_gen")
        generator = torch.Generator(device=device).manual_seed(params.seed)
        return self.lm.t2i_generate(
            input_ids=ids.to(device), uncond_input_ids=uncond_ids.to(device), attention_mask=mask.to(device),
            uncond_attention_mask=uncond_mask.to(device), guidance_scale=params.guidance_scale,
            temperature=params.temperature, timesteps=params.steps,
            noise_schedule=self.api.sampling.get_mask_schedule("cosine"), seq_len=self.sizes.num_vq_tokens,
            uni_prompting=self.prompting, mask_token_id=self.sizes.mask_token_id,
            # upstream reads the text prefix length from `resolution` (its configs set both to 512)
            resolution=self.sizes.max_text_len, codebook_size=self.sizes.codebook_size, generator=generator,
        )

    @staticmethod
    def block_schedule(max_new_tokens: int, steps: int | None) -> tuple[int, int]:
        """(steps, block length) for `mmu_generate`: block = tokens/4, steps = tokens/2 by default,
        rounded up to a multiple of the number of blocks (upstream asserts both divisions)."""
        block = max(1, max_new_tokens // 4)
        while max_new_tokens % block:
            block -= 1
        blocks = max_new_tokens // block
        wanted = steps or max(1, max_new_tokens // 2)
        return math.ceil(wanted / blocks) * blocks, block

    @torch.inference_mode()
    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("understanding")
        results = []
        for request in requests:
            p = request.params.merged_over(self.default_params("understanding"))
            if p.temperature:
                raise ValueError("mmada understanding is greedy here: set temperature to 0 or leave it unset")
            if len(request.images) > 1:
                raise ValueError(f"mmada understands one image per question; got {len(request.images)}")
            steps, block = self.block_schedule(p.max_new_tokens, p.steps)
            start = time.perf_counter()
            ids = self.question_ids(request)
            output = self.lm.mmu_generate(ids, max_new_tokens=p.max_new_tokens, steps=steps, block_length=block,
                                          temperature=0.0, mask_id=self.sizes.mask_token_id)
            text = self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
            results.append(InferenceResult(text=text, params=p.model_copy(update={"steps": steps}),
                                           elapsed_s=time.perf_counter() - start))
        return results

    def question_ids(self, request: InferenceRequest) -> torch.Tensor:
        device = self.lm.device
        messages = [{"role": "user", "content": request.prompt or ""}]
        question = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        text_ids = self.tokenizer(question, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
        if not request.images:
            return torch.cat([self.prompting.sptids_dict["<|mmu|>"].to(device).view(1, 1), text_ids], dim=1).long()
        pixels = to_vq_pixels(request.images[0], self.sizes.resolution).unsqueeze(0).to(device)
        codes = self.vq.get_code(pixels) + self.text_vocab
        special = {name: self.prompting.sptids_dict[name].to(device).view(1, 1) for name in ("<|mmu|>", "<|soi|>", "<|eoi|>")}
        return torch.cat([special["<|mmu|>"], special["<|soi|>"], codes, special["<|eoi|>"], text_ids], dim=1).long()


def _vq_state_dict(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        state: dict[str, torch.Tensor] = {}
        for file in safetensors:
            state.update(load_file(str(file)))
        return state
    pickles = sorted(folder.glob("*.bin"))
    if pickles and allow_pickle:
        return torch.load(pickles[0], map_location="cpu", weights_only=True)
    raise ConfigError(f"{folder}: no MAGVITv2 safetensors" + (" (only pickles; set allow_pickle: true to read them)"
                                                              if pickles else ""))


# -- tiny model for tests ---------------------------------------------------------------------

_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_LLADA_VOCAB = 126464  # the reserved special-token ids (126084..) and the mask id (126336) are fixed upstream


def build_tiny(path: Path, seed: int = 0, repo_path: str | Path | None = None) -> Mmada:
    """A random MMaDA of the real upstream classes: LLaDA 32 hidden × 2 layers (its vocabulary keeps
    LLaDA's size, because upstream hard-codes special-token ids above 126000), a 64-code MAGVITv2
    (×8 down-sampling: 64 px → 64 codes), saved at `path`."""
    import dataclasses

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    repo = UPSTREAM.resolve(repo_path)
    api = import_upstream(repo)
    tokenizer = train_tiny_tokenizer(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}, None,
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    )
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    codes, resolution = 64, 64
    vocab = _LLADA_VOCAB + codes
    llada = api.llada_config.ModelConfig(
        d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, activation_type="silu", block_type="llama",
        layer_norm_type="rms", rope=True, flash_attention=False, vocab_size=vocab, embedding_size=vocab,
        max_sequence_length=512, mask_token_id=126336, include_bias=False, weight_tying=False,
    )
    fields = {f.name: getattr(llada, f.name) for f in dataclasses.fields(llada)}
    fields = {k: (v.value if hasattr(v, "value") else v) for k, v in fields.items()}
    config = api.mmada.MMadaConfig(**fields, llm_vocab_size=_LLADA_VOCAB, new_vocab_size=vocab, codebook_size=codes,
                                   num_vq_tokens=codes)
    torch.manual_seed(seed)
    lm = api.LM(config)
    block = {"ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": [1, 1, 1, 1], "z_channels": 6,
             "resolution": resolution}
    vq_args = {"encoder": block, "decoder": block, "quantizer": {"codebook_dim": 6}}
    vq = build_vq(api, vq_args)
    sizes = MmadaSizes(max_text_len=32, resolution=resolution, num_vq_tokens=codes, codebook_size=codes,
                       vq_args=vq_args, repo_path=str(repo))
    backbone = Mmada(api, lm, vq, tokenizer, sizes, ModelInfo(backbone=Mmada.key, source=str(path)))
    path.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(path)
    return backbone
