"""JanusFlow (deepseek-ai/JanusFlow-1.3B): understanding and rectified-flow text-to-image on the authors' code.

JanusFlow is one Llama over text, SigLIP image features (understanding) and the latents of the
SDXL VAE (generation): each Euler step encodes the latent with a shallow U-ViT, runs the Llama on
prompt + time embedding + latent tokens, and decodes a velocity from the last hidden states. This
adapter imports the user's checkout of https://github.com/deepseek-ai/Janus (`repo_path` option or
`UMM_JANUS_REPO`), written against commit 1daa72fa4090, as the package `janus` (its modules import
themselves by that name), and calls it the way the README's JanusFlow examples do:
`MultiModalityCausalLM` and `VLChatProcessor` from `janus.janusflow.models`, understanding by
`prepare_inputs_embeds` + the Llama's `generate`, generation by the README's ODE loop.

Differences from the README loop, neither changing its result: requests run one image at a time
with their own generator (upstream batches five images of one prompt), and every step runs the
whole sequence — the README's cache truncation loops over an empty list, so on the transformers it
was written for (an empty tuple becomes an empty cache) upstream recomputes it each step as well. The latent grid follows the VAE (its down-sampling) and the
U-ViT encoder's output, which are 48×48 → 24×24 = 576 tokens for the published 384 px model.

The code imports torchvision (uvit.py, image processing) and timm (siglip_vit.py), neither of which
loads beside the harness's CPU torch 2.13 wheel, and `attrdict`, which `janus/__init__.py` itself
patches for Python >= 3.10; so it runs in its own environment (`pip_requirements`, `env_manager`).
Nothing of the checkout is edited or shimmed.

Defaults (README): generation CFG 2.0, 30 Euler steps, 384 px, seed 0 (the VAE stabilityai/sdxl-vae,
bf16 on GPU); understanding greedy, at most 512 new tokens.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from model_flavors.upstream_backbone import UpstreamBackbone, checkout_requirement, local_folder, torch_dtype
from model_flavors.upstream_checkout import UpstreamCheckout, import_or_explain, same_code
from umm_harness.core.backbone import ModelInfo, require_safetensors
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind, decode_image

log = logging.getLogger(__name__)

UPSTREAM = UpstreamCheckout(
    name="JanusFlow", repo="https://github.com/deepseek-ai/Janus", commit="1daa72fa409002d40931bd7b36a9280362469ead",
    markers=("janus/janusflow/models/modeling_vlm.py", "janus/janusflow/models/uvit.py"), env="UMM_JANUS_REPO",
)
# Its environment: upstream's pyproject dependencies (+ diffusers for the SDXL VAE and the U-ViT's
# embeddings), less accelerate and sentencepiece, which the imported modules never use; torchvision
# needs the torch it was built for (2.14.1), and transformers stays on 4.x, which the code was written for.
REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "transformers==4.48.2", "tokenizers>=0.21,<0.22",
                "timm>=0.9.16", "attrdict==2.0.1", "einops>=0.7", "diffusers==0.32.2")
REFERENCE_FILE = "umm_janus_flow.json"
VAE_HUB_ID = "stabilityai/sdxl-vae"
CFG, STEPS, RESOLUTION = 2.0, 30, 384
MAX_NEW_TOKENS = 512
FEATURES = 768  # the U-ViT's channels: modeling_vlm's aligners are fixed to 768 <-> 2048


@dataclass
class JanusFlowSizes:
    """What requests need beyond the checkpoint (`umm_janus_flow.json`): the published model's values."""

    resolution: int = RESOLUTION
    repo_path: str | None = None


def import_upstream(repo: Path) -> SimpleNamespace:
    """`janus.janusflow.models` from the checkout (imported as `janus`, the name its modules use) and diffusers' VAE."""
    loaded = sys.modules.get("janus")
    if loaded is not None and not same_code(Path(loaded.__file__).parent.parent, repo):
        raise ConfigError(f"a package 'janus' is already imported from {loaded.__file__}; JanusFlow needs the one "
                          f"in {repo}: run it in a process (or environment) of its own")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # janus/__init__ announces its collections patch
        models = import_or_explain("janus.janusflow.models", UPSTREAM, REQUIREMENTS)
        image_processing = import_or_explain("janus.janusflow.models.image_processing_vlm", UPSTREAM, REQUIREMENTS)
        vae = import_or_explain("diffusers.models.autoencoders.autoencoder_kl", UPSTREAM, REQUIREMENTS)
    log.debug("janus: %s", printed.getvalue().strip())
    return SimpleNamespace(MultiModalityCausalLM=models.MultiModalityCausalLM, VLChatProcessor=models.VLChatProcessor,
                           VLMImageProcessor=image_processing.VLMImageProcessor, AutoencoderKL=vae.AutoencoderKL,
                           modeling=sys.modules["janus.janusflow.models.modeling_vlm"])


class JanusFlow(UpstreamBackbone):
    key: ClassVar[str] = "janus_flow"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation"})
    requires: ClassVar[tuple[str, ...]] = (
        checkout_requirement(UPSTREAM),
        "its own environment (torch 2.14.1 + torchvision, timm, attrdict, transformers==4.48.2): --env-manager uv")
    hub_ids: ClassVar[tuple[str, ...]] = ("deepseek-ai/JanusFlow-1.3B",)
    notes: ClassVar[str] = "rectified flow in the SDXL VAE latent (stabilityai/sdxl-vae, bf16)"
    pip_requirements: ClassVar[tuple[str, ...]] = REQUIREMENTS
    upstream: ClassVar[UpstreamCheckout] = UPSTREAM
    sizes_file: ClassVar[str] = REFERENCE_FILE
    env_manager: ClassVar[str] = "uv"

    def __init__(self, model, processor, vae, sizes: JanusFlowSizes, info: ModelInfo):
        self.model, self.processor, self.vae = model.eval(), processor, vae.eval()
        self.tokenizer, self.sizes, self.info = processor.tokenizer, sizes, info

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
             repo_path: str | Path | None = None, vae_source: str = VAE_HUB_ID,
             allow_pickle: bool = False) -> JanusFlow:
        """`source`: a folder this adapter saved, or a JanusFlow checkpoint (hub id or folder), used with
        the SDXL VAE at `vae_source`."""
        dtype_ = torch_dtype(dtype)
        sizes, repo, saved = cls.saved_sizes(Path(source), JanusFlowSizes(), repo_path)
        api = import_upstream(repo)
        folder = local_folder(source, revision)
        model_folder = folder / "model" if saved else folder
        vae_folder = folder / "vae" if saved else local_folder(vae_source)
        require_safetensors(str(model_folder), allow_pickle)
        model = api.MultiModalityCausalLM.from_pretrained(str(model_folder), torch_dtype=dtype_,
                                                          use_safetensors=not allow_pickle).to(device)
        processor = _quiet(api.VLChatProcessor.from_pretrained, str(model_folder))
        vae = api.AutoencoderKL.from_pretrained(str(vae_folder), torch_dtype=dtype_,
                                                use_safetensors=not allow_pickle).to(device)
        return cls(model, processor, vae, sizes, ModelInfo(backbone=cls.key, source=source, revision=revision,
                                                           dtype=dtype))

    def save_pretrained(self, path: Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path / "model", safe_serialization=True)
        self.processor.save_pretrained(path / "model")
        self.vae.save_pretrained(path / "vae", safe_serialization=True)
        self.save_sizes(path)

    # -- requests -----------------------------------------------------------------------------

    def default_params(self, task: TaskKind) -> InferenceParams:
        return card_params(task, self.sizes.resolution)

    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("understanding")
        return [self._answer(request) for request in requests]

    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        return [self._image(request) for request in requests]

    def _answer(self, request: InferenceRequest) -> InferenceResult:
        """The README's understanding example: one user turn with the image placeholders, the Llama's generate."""
        import torch

        p = request.params.merged_over(card_params("understanding"))
        placeholders = "".join(f"{self.processor.image_tag}\n" for _ in request.images)
        conversation = [{"role": "User", "content": placeholders + (request.prompt or "")},
                        {"role": "Assistant", "content": ""}]
        images = [decode_image(image).convert("RGB") for image in request.images]
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(p.seed)
            inputs = _quiet(self.processor, conversations=conversation, images=images, force_batchify=True)
            inputs = inputs.to(self.model.device, dtype=self.model.dtype)
            embeds = self.model.prepare_inputs_embeds(**inputs)
            out = self.model.language_model.generate(
                inputs_embeds=embeds, attention_mask=inputs.attention_mask, pad_token_id=self.tokenizer.eos_token_id,
                bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
                max_new_tokens=p.max_new_tokens, use_cache=True, **text_sampling(p))
        text = self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True).strip()
        return InferenceResult(text=text, params=p, elapsed_s=time.perf_counter() - start)

    def _image(self, request: InferenceRequest) -> InferenceResult:
        """The README's rectified-flow ODE for one image: Euler steps from N(0, 1) in the VAE latent,
        v = w·v_cond − (w−1)·v_uncond, the unconditional prompt padded (and masked) after BOS."""
        import torch

        p = generation_params(request, self.sizes.resolution)
        model, vae = self.model, self.vae
        conversation = [{"role": "User", "content": request.prompt or ""}, {"role": "Assistant", "content": ""}]
        prompt = self.processor.apply_sft_template_for_multi_turn_prompts(
            conversations=conversation, sft_format=self.processor.sft_format, system_prompt="")
        ids = torch.tensor(self.tokenizer.encode(prompt + self.processor.image_gen_tag), device=model.device)
        latent_side = p.image_size // 2 ** (len(vae.config.block_out_channels) - 1)
        start = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(p.seed)
        with torch.inference_mode():
            tokens = torch.stack([ids, ids])
            tokens[1, 1:] = self.processor.pad_id
            prompt_embeds = model.language_model.get_input_embeddings()(tokens)[:, :-1]  # <bog> becomes t_emb
            z = torch.randn((1, vae.config.latent_channels, latent_side, latent_side), generator=generator)
            z = z.to(model.device, model.dtype)
            dt = 1.0 / p.steps
            mask = None
            for step in range(p.steps):
                z_in = torch.cat([z, z])
                t = torch.full((2,), step / p.steps * 1000.0, device=model.device, dtype=model.dtype)
                z_emb, t_emb, hs = model.vision_gen_enc_model(z_in, t)
                grid = z_emb.shape[-2:]
                z_emb = model.vision_gen_enc_aligner(z_emb.flatten(2).permute(0, 2, 1))
                sequence = torch.cat([prompt_embeds, t_emb.unsqueeze(1), z_emb], dim=1)
                if mask is None:
                    mask = torch.ones(sequence.shape[:2], dtype=torch.int, device=model.device)
                    mask[1, 1:prompt_embeds.shape[1]] = 0
                hidden = model.language_model.model(inputs_embeds=sequence, attention_mask=mask).last_hidden_state
                hidden = model.vision_gen_dec_aligner(model.vision_gen_dec_aligner_norm(hidden[:, -z_emb.shape[1]:]))
                hidden = hidden.reshape(2, *grid, FEATURES).permute(0, 3, 1, 2)
                v_cond, v_uncond = model.vision_gen_dec_model(hidden, hs, t_emb).chunk(2)
                z = z + dt * (p.guidance_scale * v_cond - (p.guidance_scale - 1.0) * v_uncond)
            pixels = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample
        array = ((pixels[0].float().clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        from PIL import Image

        return InferenceResult(images=[Image.fromarray(array)], params=p, elapsed_s=time.perf_counter() - start)


def card_params(task: TaskKind, resolution: int = RESOLUTION) -> InferenceParams:
    """The README's settings: greedy answers; CFG 2.0, 30 Euler steps, seed 0 for images."""
    if task == "understanding":
        return InferenceParams(seed=0, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    return InferenceParams(seed=0, guidance_scale=CFG, steps=STEPS, image_size=resolution)


def generation_params(request: InferenceRequest, resolution: int = RESOLUTION) -> InferenceParams:
    """A generation request's settings over the card's, or a ValueError naming the field it cannot take."""
    p = request.params.merged_over(card_params("generation", resolution))
    if p.image_size != resolution:
        raise ValueError(f"janus_flow generates {resolution}px images; got image_size={p.image_size}")
    if request.images:
        raise ValueError(f"janus_flow generates from text only; got {len(request.images)} input image(s)")
    return p


def text_sampling(p: InferenceParams) -> dict[str, Any]:
    """The Llama's `generate` settings: greedy as the README runs it; with a temperature, the demo's top-p 0.95."""
    return {"do_sample": True, "temperature": p.temperature, "top_p": 0.95} if p.temperature else {"do_sample": False}


def _quiet(call, *args, **kwargs):
    """`call` with upstream's prints ("Add image tag = ...") sent to the debug log."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = call(*args, **kwargs)
    if printed.getvalue().strip():
        log.debug("janus: %s", printed.getvalue().strip())
    return result


# -- tiny model for tests ---------------------------------------------------------------------

SPECIALS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<｜▁pad▁｜>"}
IMAGE_TAGS = ("<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<｜begin▁of▁generation｜>")


def build_tiny(path: Path, seed: int = 0, repo_path: str | Path | None = None, resolution: int = 64) -> JanusFlow:
    """A random JanusFlow of the real upstream classes, saved at `path`: the Llama keeps the 2048 width the
    aligners fix (1 layer, 2 KV heads); SigLIP-L keeps its 1024 width, cut to 1 block by upstream's own
    `select_layer`; the U-ViTs keep 768 channels with 1 block; an SDXL-VAE-shaped AutoencoderKL (4 latent
    channels, 8× down-sampling) with 32 channels. 64 px: 16 SigLIP tokens, an 8×8 latent, 4×4 = 16 flow tokens.
    Runs where the upstream code imports (its own environment)."""
    import torch
    from transformers import LlamaTokenizerFast

    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    repo = UPSTREAM.resolve(repo_path)
    api = import_upstream(repo)
    trained = train_tiny_tokenizer(SPECIALS, additional_tokens=list(IMAGE_TAGS))
    tokenizer = LlamaTokenizerFast(tokenizer_object=trained.backend_tokenizer, legacy=False, **SPECIALS)
    image_processor = api.VLMImageProcessor(image_size=resolution, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = _quiet(api.VLChatProcessor, image_processor, tokenizer, num_image_tokens=(resolution // 16) ** 2)
    torch.manual_seed(seed)
    uvit = {"block_out_channels": [FEATURES], "layers_in_middle": 1, "hidden_size": 2048, "use_mid_block": True}
    config = api.modeling.MultiModalityConfig(
        vision_und_enc_config={"cls": "CLIPVisionTower", "params": {
            "model_name": "siglip_large_patch16_384", "image_size": resolution, "select_feature": "same",
            "select_layer": 1}},
        vision_gen_enc_config={"cls": "ShallowUViTEncoder", "params": {
            "input_channels": 4, "stride": 2, "kernel_size": 2, "padding": 0, **uvit}},
        vision_gen_dec_config={"cls": "ShallowUViTDecoder", "params": {
            "in_channels": FEATURES, "out_channels": 4, "upsamples": 1, **uvit}},
        language_config={"vocab_size": len(tokenizer), "hidden_size": 2048, "intermediate_size": 128,
                         "num_hidden_layers": 1, "num_attention_heads": 16, "num_key_value_heads": 2,
                         "max_position_embeddings": 512, "bos_token_id": tokenizer.bos_token_id,
                         "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
    )
    model = api.MultiModalityCausalLM(config)
    vae = api.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=resolution, scaling_factor=0.13025)
    backbone = JanusFlow(model, processor, vae, JanusFlowSizes(resolution=resolution, repo_path=str(repo)),
                         ModelInfo(backbone=JanusFlow.key, source=str(path)))
    backbone.save_pretrained(path)
    return backbone


if __name__ == "__main__":  # python -m model_flavors.janus_flow <folder> <checkout>: the tiny build, in its environment
    build_tiny(Path(sys.argv[1]), repo_path=sys.argv[2])
