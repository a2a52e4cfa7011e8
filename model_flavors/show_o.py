"""Show-o (showlab/show-o, -512x512): understanding and text-to-image on the authors' code.

Show-o is Phi-1.5 trained to predict masked MAGVIT-v2 image tokens (MaskGIT-style discrete
diffusion) and text tokens. This adapter imports the user's checkout of
https://github.com/showlab/Show-o (`repo_path` option or `UMM_SHOW_O_REPO`), written against
commit 45a5a2de01d1, and calls its entry points the way `inference_t2i.py` and
`inference_mmu.py` do (`Showo.t2i_generate` on a `UniversalPrompting` `t2i_gen` prompt with
`create_attention_mask_predict_next`; `Showo.mmu_generate` on `<|mmu|><|soi|> codes <|eoi|><|sot|>
USER: \\n{question} ASSISTANT:` with `create_attention_mask_for_mmu`, top-k 1).

Accommodations, none of which edits the checkout (the same kind as MMaDA's, see `mmada.py`):
- `models/modeling_utils.py`, a vendored copy of an old diffusers `ModelMixin`, is replaced by
  the installed diffusers' base classes (it fails to import on diffusers >=0.35);
- the checkout's packages import under private names (`_umm_show_o.models`, ...);
- its vendored `phi.py` reads `config.rope_theta`, `config.partial_rotary_factor` and
  `config.rope_scaling["type"]`, which transformers 5 folds into `config.rope_parameters`; `Showo`
  gets a subclass of that Phi which puts the three back from `rope_parameters` before building.

Requests run one at a time (upstream samples a batch from one generator), each with its own
generator; understanding is greedy (top-k 1), as upstream runs it.

Defaults (README, 512 model): CFG 5, 50 timesteps, temperature 1.0, cosine schedule, 512 px
(1024 codes); understanding up to 100 new tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from PIL import Image

from model_flavors.mmada import _vq_state_dict, build_vq, to_vq_pixels
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

UPSTREAM = UpstreamCheckout(
    name="Show-o", repo="https://github.com/showlab/Show-o", commit="45a5a2de01d1ebd10cd5864d29310a76476cdf23",
    markers=("models/modeling_showo.py", "models/phi.py", "training/prompting_utils.py"), env="UMM_SHOW_O_REPO",
)
REQUIREMENTS = ("torch==2.13.0", "transformers>=5.0,<6", "diffusers>=0.35", "omegaconf>=2.3", "einops>=0.7",
                "jaxtyping>=0.2", "typeguard>=4")
REFERENCE_FILE = "umm_show_o.json"
VQ_HUB_ID = "showlab/magvitv2"
SPECIAL_TOKENS = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")
_ALIAS = "_umm_show_o"


@dataclass
class ShowOSizes:
    """What the prompt format and the decoders need (`umm_show_o.json`); the published 512 model's values."""

    max_text_len: int = 128
    resolution: int = 512
    num_new_special_tokens: int = 10  # [PAD] + the nine task tokens UniversalPrompting adds
    vq_args: dict[str, Any] = field(default_factory=dict)  # empty = upstream's 8192-code MAGVITv2
    repo_path: str | None = None


def import_upstream(repo: Path) -> SimpleNamespace:
    private_package(_ALIAS, repo)
    private_package(f"{_ALIAS}.models", repo / "models")
    diffusers_modelmixin_standin(f"{_ALIAS}.models.modeling_utils", REQUIREMENTS)
    names = {"showo": "modeling_showo", "magvit": "modeling_magvitv2", "phi": "phi", "sampling": "sampling"}
    api = {key: import_or_explain(f"{_ALIAS}.models.{module}", UPSTREAM, REQUIREMENTS) for key, module in names.items()}
    api["showo"].PhiForCausalLM = _phi_for_transformers5(api["phi"].PhiForCausalLM)
    api["prompting"] = module_from_file(f"{_ALIAS}.prompting_utils", repo / "training" / "prompting_utils.py")
    return SimpleNamespace(**api)


def _phi_for_transformers5(vendored: type) -> type:
    """The vendored Phi, given back the three config fields transformers 5 moved into `rope_parameters`."""

    class PhiForCausalLM(vendored):
        def __init__(self, config, *args, **kwargs):
            rope = getattr(config, "rope_parameters", None) or {}
            for name in ("rope_theta", "partial_rotary_factor"):
                if not hasattr(config, name) and name in rope:
                    setattr(config, name, rope[name])
            scaling = getattr(config, "rope_scaling", None)
            if scaling and "type" not in scaling and scaling.get("rope_type", "default") == "default":
                config.rope_scaling = None  # transformers 5's spelling of "no scaling"
            super().__init__(config, *args, **kwargs)

    return PhiForCausalLM


class ShowO(UpstreamBackbone):
    key: ClassVar[str] = "show_o"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    requires: ClassVar[tuple[str, ...]] = (checkout_requirement(UPSTREAM),
                                           "diffusers>=0.35", "omegaconf", "einops", "jaxtyping", "typeguard")
    hub_ids: ClassVar[tuple[str, ...]] = ("showlab/show-o", "showlab/show-o-512x512")
    notes: ClassVar[str] = "Phi-1.5 + discrete diffusion over MAGVIT-v2 tokens (VQ: showlab/magvitv2)"
    # Its environment beside the harness's base: upstream pins (transformers 4.41.1, diffusers 0.30.1)
    # adjusted to what runs with the adapter's accommodations here (transformers 5.25, diffusers 0.42.1).
    pip_requirements: ClassVar[tuple[str, ...]] = REQUIREMENTS[2:]  # torch and transformers: the base pins
    upstream: ClassVar[UpstreamCheckout] = UPSTREAM
    sizes_file: ClassVar[str] = REFERENCE_FILE

    def __init__(self, api: SimpleNamespace, model, vq, tokenizer, sizes: ShowOSizes, info: ModelInfo):
        self.api, self.model, self.vq, self.tokenizer, self.sizes, self.info = api, model.eval(), vq.eval(), tokenizer, sizes, info
        tokenizer.padding_side = "left"
        self.prompting = api.prompting.UniversalPrompting(tokenizer, max_text_len=sizes.max_text_len,
                                                          special_tokens=SPECIAL_TOKENS, ignore_id=-100,
                                                          cond_dropout_prob=0.1)
        showo = model.config
        self.run_config = SimpleNamespace(  # the slice of upstream's OmegaConf config that t2i_generate reads
            model=SimpleNamespace(showo=SimpleNamespace(num_vq_tokens=showo.num_vq_tokens,
                                                        num_new_special_tokens=sizes.num_new_special_tokens,
                                                        llm_vocab_size=showo.llm_vocab_size)),
            dataset=SimpleNamespace(preprocessing=SimpleNamespace(max_seq_length=sizes.max_text_len)))

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
             repo_path: str | Path | None = None, vq_source: str = VQ_HUB_ID, allow_pickle: bool = False) -> ShowO:
        """`source`: a folder this adapter saved, or a Show-o checkpoint (hub id or folder) used with the
        MAGVITv2 at `vq_source`, its Phi config and tokenizer from the checkpoint's `llm_model_path`."""
        dtype_ = torch_dtype(dtype)
        sizes, repo, saved = cls.saved_sizes(Path(source), ShowOSizes(), repo_path)
        api = import_upstream(repo)
        folder = local_folder(source, revision)
        model_folder = folder / "showo" if saved else folder
        require_safetensors(str(model_folder), allow_pickle)
        config = dict(api.showo.Showo.load_config(model_folder))
        if "llm_vocab_size" not in config:
            raise ConfigError(f"{model_folder}/config.json is not a Show-o config (no llm_vocab_size)")
        if config.get("w_clip_vit"):
            raise ConfigError(f"{source} is a Show-o CLIP-ViT variant; this adapter runs the MAGVIT-only models "
                              f"({', '.join(cls.hub_ids)})")
        if saved:
            config["llm_model_path"] = str(folder / "phi")
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        model = api.showo.Showo.from_config(config)
        state = {}
        for file in sorted(model_folder.glob("*.safetensors")):
            state.update(load_file(str(file)))
        model.load_state_dict(state, strict=True)
        model = model.to(device=device, dtype=dtype_)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer") if saved else config["llm_model_path"])
        vq = build_vq(api, sizes.vq_args)
        vq_folder = folder / "vq" if saved else local_folder(vq_source)
        vq.load_state_dict(_vq_state_dict(vq_folder, allow_pickle), strict=True)
        return cls(api, model, vq.to(device), tokenizer, sizes,
                   ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype))

    def save_pretrained(self, path: Path) -> None:
        from transformers import AutoConfig

        path = Path(path)
        AutoConfig.from_pretrained(self.model.config.llm_model_path).save_pretrained(path / "phi")
        self.model.save_pretrained(path / "showo", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        save_state(self.vq, path / "vq" / "model.safetensors")
        self.save_sizes(path)

    # -- requests -----------------------------------------------------------------------------

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "generation":
            return InferenceParams(seed=0, guidance_scale=5.0, steps=50, temperature=1.0,
                                   image_size=self.sizes.resolution)
        return InferenceParams(seed=0, max_new_tokens=100, temperature=0.0)

    @torch.inference_mode()
    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        params = [self._generation_params(r) for r in requests]
        results = []
        for request, p in zip(requests, params):
            start = time.perf_counter()
            codes = self.image_codes(request.prompt or "", p)
            pixels = self.vq.decode_code(codes.clamp(0, self.model.config.codebook_size - 1))
            array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).cpu()
            results.append(InferenceResult(images=[Image.fromarray(array.numpy())], params=p,
                                           elapsed_s=time.perf_counter() - start))
        return results

    def _generation_params(self, request: InferenceRequest) -> InferenceParams:
        p = request.params.merged_over(self.default_params("generation"))
        if p.image_size != self.sizes.resolution:
            raise ValueError(f"show_o generates {self.sizes.resolution}px images only (its VQ's "
                             f"{self.model.config.num_vq_tokens} codes); got image_size={p.image_size}")
        return p.model_copy(update={"image_guidance_scale": None, "max_new_tokens": None})

    def image_codes(self, prompt: str, params: InferenceParams) -> torch.Tensor:
        device, pad = self.model.device, self.prompting.sptids_dict
        masked = torch.full((1, self.model.config.num_vq_tokens), self.model.config.mask_token_id, dtype=torch.long)
        ids, _ = self.prompting(([prompt], masked), "t2i_gen")
        uncond_ids, _ = self.prompting(([""], masked.clone()), "t2i_gen")
        mask = self.api.prompting.create_attention_mask_predict_next(
            torch.cat([ids, uncond_ids]), pad_id=int(pad["<|pad|>"]), soi_id=int(pad["<|soi|>"]),
            eoi_id=int(pad["<|eoi|>"]), rm_pad_in_image=True)
        return self.model.t2i_generate(
            input_ids=ids.to(device), uncond_input_ids=uncond_ids.to(device), attention_mask=mask.to(device),
            guidance_scale=params.guidance_scale, temperature=params.temperature, timesteps=params.steps,
            noise_schedule=self.api.sampling.get_mask_chedule("cosine"), config=self.run_config,
            generator=torch.Generator(device=device).manual_seed(params.seed),
        )

    @torch.inference_mode()
    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("understanding")
        results = []
        for request in requests:
            p = request.params.merged_over(self.default_params("understanding"))
            if p.temperature:
                raise ValueError("show_o understanding is greedy (top-k 1): set temperature to 0 or leave it unset")
            if len(request.images) != 1:
                raise ValueError(f"show_o answers questions about exactly one image; got {len(request.images)}")
            start = time.perf_counter()
            ids = self.question_ids(request)
            mask = self.api.prompting.create_attention_mask_for_mmu(
                ids, eoi_id=int(self.prompting.sptids_dict["<|eoi|>"]))
            tokens = self.model.mmu_generate(ids, attention_mask=mask, max_new_tokens=p.max_new_tokens, top_k=1,
                                             eot_token=self.prompting.sptids_dict["<|eot|>"])
            text = self.tokenizer.decode(torch.stack(tokens).view(-1), skip_special_tokens=True).strip()
            results.append(InferenceResult(text=text, params=p, elapsed_s=time.perf_counter() - start))
        return results

    def question_ids(self, request: InferenceRequest) -> torch.Tensor:
        device, special = self.model.device, self.prompting.sptids_dict
        question = self.tokenizer(["USER: \n" + (request.prompt or "") + " ASSISTANT:"])["input_ids"]
        pixels = to_vq_pixels(request.images[0], self.sizes.resolution).unsqueeze(0).to(device)
        codes = self.vq.get_code(pixels) + len(self.prompting.text_tokenizer)
        return torch.cat([special["<|mmu|>"].view(1, 1).to(device), special["<|soi|>"].view(1, 1).to(device), codes,
                          special["<|eoi|>"].view(1, 1).to(device), special["<|sot|>"].view(1, 1).to(device),
                          torch.tensor(question, device=device)], dim=1).long()


# -- tiny model for tests ---------------------------------------------------------------------

def build_tiny(path: Path, seed: int = 0, repo_path: str | Path | None = None) -> ShowO:
    """A random Show-o of the real upstream classes (Phi 64 hidden × 2 layers, a 64-code MAGVITv2 with
    ×8 down-sampling: 64 px ↔ 64 codes, 16 text tokens), saved at `path`."""
    from transformers import PhiConfig

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    repo = UPSTREAM.resolve(repo_path)
    api = import_upstream(repo)
    tokenizer = train_tiny_tokenizer({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                      "unk_token": "<|endoftext|>"})
    text_vocab, codes, resolution = len(tokenizer), 64, 64
    path.mkdir(parents=True, exist_ok=True)
    PhiConfig(vocab_size=text_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=512, partial_rotary_factor=0.5).save_pretrained(path / "phi")
    torch.manual_seed(seed)
    sizes = ShowOSizes(max_text_len=16, resolution=resolution, repo_path=str(repo))
    model = api.showo.Showo(w_clip_vit=False, vocab_size=text_vocab + sizes.num_new_special_tokens + codes + 1,
                            llm_vocab_size=text_vocab, llm_model_path=str(path / "phi"), codebook_size=codes,
                            num_vq_tokens=codes)
    block = {"ch": 32, "ch_mult": [1, 1, 2, 2], "num_res_blocks": [1, 1, 1, 1], "z_channels": 6,
             "resolution": resolution}
    sizes.vq_args = {"encoder": block, "decoder": block, "quantizer": {"codebook_dim": 6}}
    backbone = ShowO(api, model, build_vq(api, sizes.vq_args), tokenizer, sizes,
                     ModelInfo(backbone=ShowO.key, source=str(path)))
    backbone.save_pretrained(path)
    return backbone
