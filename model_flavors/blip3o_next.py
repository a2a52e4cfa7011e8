"""BLIP3o-NEXT (text-to-image), assembled from native transformers and diffusers parts.

BLIP3o-NEXT (github.com/JiuhaiChen/BLIP3o, branch `BLIP3o-NEXT`) is a Qwen3 language model that
first writes a caption's image as discrete image tokens, then hands its last-layer hidden states
to a Sana diffusion transformer that paints in a DC-AE latent space. Every part is a class of
transformers or diffusers: `Qwen3ForCausalLM`, `SanaTransformer2DModel`, `AutoencoderDC`,
`FlowMatchEulerDiscreteScheduler`. The authors' repository carries no licence, so the glue here
is our own, written from reading how it runs:

1. prompt: Qwen chat template, system "You are a helpful assistant.", user "Please generate
   image based on the following caption: {prompt}", then `<im_start>` and the scale token
   `<S0>`;
2. the LM samples `image_tokens` (729 = 27×27) tokens, top-k 1200, top-p 0.95;
3. one forward pass over prompt + tokens; the last hidden states after `<im_start>` go through
   the diffusion connector (Linear → GELU(tanh) → Linear → RMSNorm) as Sana's caption states;
4. flow-matching Euler sampling (sigmas 1 → 1/N, N = 30) of a 32×32 latent with CFG 2.0 whose
   unconditional branch is all-zero LM states; the DC-AE decodes (1024 px).

Each request gets its own `torch.Generator` (tokens, then the latent noise), so a sample's
image does not depend on its batch neighbours.

Checkpoint layout (the published one as far as it could be read offline; see the module's
report for what is unverified): `config.json` = a Qwen3 config plus `image_start_tag_id`,
`scale_start_token_id` and `diffusion_name_or_path` (a diffusers folder with `transformer/`,
`vae/`, `scheduler/` configs); one set of safetensors holding the LM (`model.*`, `lm_head.*`)
and the diffusion parts under `model.sana.*`, `model.sana_vae.*`, `model.diffusion_connector.*`.
`save_pretrained` writes the same layout, with the diffusion configs under `diffusion/`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from umm_harness.core.backbone import Backbone, ModelInfo, require_safetensors
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind
from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
UPSTREAM = {"repo": "https://github.com/JiuhaiChen/BLIP3o", "branch": "BLIP3o-NEXT",
            "commit": "6ced364eeee8b2d53e9491ffae48b00a0271cda2", "licence": "none (glue written here)"}
SYSTEM_PROMPT = "You are a helpful assistant."
USER_TEMPLATE = "Please generate image based on the following caption: {prompt}"
IMAGE_START, SCALE_TOKEN = "<im_start>", "<S0>"
_EXTRA_KEYS = ("image_start_tag_id", "scale_start_token_id", "diffusion_name_or_path", "umm_image_tokens",
               "umm_latent_size")
_PREFIXES = {"sana": "model.sana.", "vae": "model.sana_vae.", "connector": "model.diffusion_connector."}


@dataclass(frozen=True)
class TokenSampling:
    """How the LM samples image tokens (the repository's generation script)."""

    top_k: int = 1200
    top_p: float = 0.95
    image_tokens: int = 729


def diffusion_connector(hidden_size: int, caption_channels: int) -> nn.Sequential:
    """LM hidden states → Sana caption states; the RMSNorm starts at sqrt(5.5) as upstream initialises it."""
    from diffusers.models.normalization import RMSNorm

    norm = RMSNorm(caption_channels, eps=1e-5, elementwise_affine=True)
    with torch.no_grad():
        norm.weight.fill_(5.5**0.5)
    return nn.Sequential(nn.Linear(hidden_size, caption_channels), nn.GELU(approximate="tanh"),
                         nn.Linear(caption_channels, caption_channels), norm)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _read_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor under `prefix` in the folder's safetensors files, prefix removed."""
    from safetensors import safe_open

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(prefix):
                    tensors[name[len(prefix):]] = handle.get_tensor(name)
    return tensors


class Blip3oNext(Backbone):
    key: ClassVar[str] = "blip3o_next"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"generation"})
    route: ClassVar[str] = "native parts"
    requires: ClassVar[tuple[str, ...]] = ("transformers>=5.0", "diffusers>=0.35")
    hub_ids: ClassVar[tuple[str, ...]] = ("BLIP3o/BLIP3o-NEXT-SFT-3B", "BLIP3o/BLIP3o-NEXT-GRPO-Geneval-3B")
    notes: ClassVar[str] = "Qwen3 → image tokens → Sana + DC-AE; own glue (the upstream repository has no licence)"
    # Its environment: the harness's plus diffusers. No upstream code runs (UPSTREAM names what was read).
    pip_requirements: ClassVar[tuple[str, ...]] = ("diffusers>=0.35",)

    def __init__(self, lm: Qwen3ForCausalLM, tokenizer, sana, vae, scheduler, connector: nn.Module,
                 extras: dict, info: ModelInfo):
        self.lm, self.tokenizer = lm.eval(), tokenizer
        self.sana, self.vae, self.scheduler, self.connector = sana.eval(), vae.eval(), scheduler, connector.eval()
        self.extras, self.info = extras, info
        self.sampling = TokenSampling(image_tokens=int(extras.get("umm_image_tokens", 729)))
        self.latent_size = int(extras.get("umm_latent_size", 32))

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32",
             device: str = "cpu") -> Blip3oNext:
        from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        folder = Path(source)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, revision=revision))
        require_safetensors(str(folder))
        raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        missing = [key for key in ("image_start_tag_id", "diffusion_name_or_path") if key not in raw]
        if missing:
            raise ConfigError(f"{folder}/config.json is not a BLIP3o-NEXT config (no {', '.join(missing)})")
        extras = {key: raw[key] for key in _EXTRA_KEYS if key in raw}
        config = Qwen3Config(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map")})
        torch_dtype = _DTYPES[dtype]
        lm = Qwen3ForCausalLM.from_pretrained(folder, config=config, dtype=torch_dtype, use_safetensors=True).to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder)

        diffusion = folder / raw["diffusion_name_or_path"]
        if not diffusion.is_dir():
            from huggingface_hub import snapshot_download

            diffusion = Path(snapshot_download(raw["diffusion_name_or_path"], allow_patterns=["*.json"]))
        sana = SanaTransformer2DModel.from_config(SanaTransformer2DModel.load_config(diffusion, subfolder="transformer"))
        vae = AutoencoderDC.from_config(AutoencoderDC.load_config(diffusion, subfolder="vae"))
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(diffusion, subfolder="scheduler")
        connector = diffusion_connector(config.hidden_size, sana.config.caption_channels)
        for name, module in (("sana", sana), ("vae", vae), ("connector", connector)):
            tensors = _read_tensors(folder, _PREFIXES[name])
            if not tensors:
                raise ConfigError(f"{folder}: no '{_PREFIXES[name]}*' weights; is this a BLIP3o-NEXT checkpoint?")
            module.load_state_dict(tensors, strict=True)
        sana, vae, connector = (m.to(device) if torch_dtype == torch.float32 else m.to(device=device, dtype=torch_dtype)
                                for m in (sana, vae, connector))
        return cls(lm, tokenizer, sana, vae, scheduler, connector, extras,
                   ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype))

    def save_pretrained(self, path: Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        self.lm.save_pretrained(path)  # config.json, LM safetensors, generation config
        self.tokenizer.save_pretrained(path)
        diffusion = path / "diffusion"
        self.sana.save_config(diffusion / "transformer")
        self.vae.save_config(diffusion / "vae")
        self.scheduler.save_pretrained(diffusion / "scheduler")
        parts = {}
        for name, module in (("sana", self.sana), ("vae", self.vae), ("connector", self.connector)):
            parts.update({_PREFIXES[name] + k: v.contiguous() for k, v in module.state_dict().items()})
        save_file(parts, str(path / "diffusion_parts.safetensors"))
        config = json.loads((path / "config.json").read_text())
        config.update(self.extras, model_type="blip3o_qwen_inference", diffusion_name_or_path="diffusion")
        (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # -- requests -----------------------------------------------------------------------------

    @property
    def native_image_size(self) -> int:
        return self.latent_size * self.vae.spatial_compression_ratio

    def default_params(self, task: TaskKind) -> InferenceParams:
        return InferenceParams(seed=0, guidance_scale=2.0, steps=30, temperature=1.0, image_size=self.native_image_size)

    def prompt_text(self, prompt: str) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt)}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + IMAGE_START + SCALE_TOKEN

    def _resolved(self, request: InferenceRequest) -> InferenceParams:
        params = request.params.merged_over(self.default_params("generation"))
        if params.image_size != self.native_image_size:
            raise ValueError(f"blip3o_next paints a {self.latent_size}×{self.latent_size} latent, i.e. "
                             f"{self.native_image_size}px images only; got image_size={params.image_size}")
        if not params.temperature:
            raise ValueError("blip3o_next samples its image tokens: temperature must be > 0")
        return params.model_copy(update={"image_guidance_scale": None, "max_new_tokens": None})

    @torch.inference_mode()
    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        params = [self._resolved(r) for r in requests]
        start = time.perf_counter()
        images: list[Image.Image | None] = [None] * len(requests)
        for steps in sorted({p.steps for p in params}):  # one scheduler run per step count
            rows = [i for i, p in enumerate(params) if p.steps == steps]
            generators = [torch.Generator().manual_seed(params[i].seed) for i in rows]
            states = self.image_states([requests[i].prompt or "" for i in rows], [params[i] for i in rows], generators)
            for i, image in zip(rows, self.paint(states, [params[i] for i in rows], generators)):
                images[i] = image
        elapsed = (time.perf_counter() - start) / len(requests)
        return [InferenceResult(images=[image], params=p, elapsed_s=elapsed) for image, p in zip(images, params)]

    def image_states(self, prompts: Sequence[str], params: Sequence[InferenceParams],
                     generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Sample the image tokens, then return the LM's last hidden states after `<im_start>`."""
        device = self.lm.device
        self.tokenizer.padding_side = "left"
        inputs = self.tokenizer([self.prompt_text(p) for p in prompts], return_tensors="pt", padding=True,
                                add_special_tokens=False)
        ids, mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
        start = ids.shape[1] - 1  # left padding puts <S0> at the same column in every row
        if not bool((ids[:, start - 1] == self.extras["image_start_tag_id"]).all()):
            raise ConfigError("the prompt does not end in <im_start><S0>: the tokenizer lacks BLIP3o-NEXT's tokens")
        temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(-1)
        past, step_ids = None, ids
        for _ in range(self.sampling.image_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            out = self.lm(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                          use_cache=True)
            past = out.past_key_values
            logits = _filter_top_k_top_p(out.logits[:, -1].float() / temperature, self.sampling.top_k,
                                         self.sampling.top_p)
            probs = torch.softmax(logits, dim=-1).cpu()
            step_ids = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
            step_ids = step_ids.unsqueeze(-1).to(device)
            ids = torch.cat([ids, step_ids], dim=1)
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return hidden[:, start:]

    def paint(self, states: torch.Tensor, params: Sequence[InferenceParams],
              generators: Sequence[torch.Generator]) -> list[Image.Image]:
        """Flow-matching Euler sampling conditioned on `states`, CFG against all-zero states."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        dtype, device, steps = self.sana.dtype, self.sana.device, params[0].steps
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)  # fresh step counter
        scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), device=device)
        shape = (self.sana.config.in_channels, self.latent_size, self.latent_size)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device=device, dtype=dtype)
        conditions = self.connector(torch.cat([torch.zeros_like(states), states]).to(dtype))
        guidance = torch.tensor([p.guidance_scale for p in params], device=device, dtype=dtype).view(-1, 1, 1, 1)
        for t in scheduler.timesteps:
            both = torch.cat([latents, latents])
            velocity = self.sana(hidden_states=both, encoder_hidden_states=conditions,
                                 timestep=t.expand(both.shape[0]), encoder_attention_mask=None).sample
            uncond, cond = velocity.chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
        latents = latents / self.vae.config.scaling_factor
        if getattr(self.vae.config, "shift_factor", None) is not None:
            latents = latents + self.vae.config.shift_factor
        pixels = ((self.vae.decode(latents.to(self.vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1) * 255).round()
        arrays = pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(array) for array in arrays]


# -- tiny model for tests ---------------------------------------------------------------------

_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny(path: Path, seed: int = 0) -> Blip3oNext:
    """A random BLIP3o-NEXT of the real classes: Qwen3 64 hidden × 2 layers, 16 image tokens, 64 image
    codes, Sana 1 layer on a 16×16 latent, a 3-level DC-AE (×4): 64 px images."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

    tokenizer = train_tiny_tokenizer(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, None,
        ["<|im_start|>", IMAGE_START, "<im_end>", SCALE_TOKEN, "<S1>", "<S2>"],
    )
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    image_codes = 64
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer) + image_codes, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    lm = Qwen3ForCausalLM(config)
    sana = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        sample_size=16, patch_size=1, mlp_ratio=2.0,
    )
    blocks = ("ResBlock",) * 3
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1), encoder_qkv_multiscales=((),) * 3,
        decoder_qkv_multiscales=((),) * 3, upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    extras = {"image_start_tag_id": tokenizer.convert_tokens_to_ids(IMAGE_START),
              "scale_start_token_id": tokenizer.convert_tokens_to_ids(SCALE_TOKEN),
              "diffusion_name_or_path": "diffusion", "umm_image_tokens": 16, "umm_latent_size": 16}
    backbone = Blip3oNext(lm, tokenizer, sana, vae, scheduler, diffusion_connector(64, 32), extras,
                          ModelInfo(backbone=Blip3oNext.key, source=str(path)))
    path.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(path)
    return backbone
