"""Emu3.5 (BAAI/Emu3.5, -Image): understanding, text-to-image and x2i editing on the authors' code.

Emu3.5 is one next-token decoder over text and IBQ image tokens (`<|visual token NNNNNN|>`, one
row per `<|extra_200|>`). This adapter imports the user's checkout of
https://github.com/baaivision/Emu3.5 (`repo_path` option or `UMM_EMU3_5_REPO`), written against
commit 8fcf1da48f9c, and calls it the way `inference.py` does: `Emu3ForCausalLM` and the
`Emu3Tokenizer` (tiktoken) from `src/`, reference images tokenized by `utils.input_utils.build_image`,
sampling by `utils.generation_utils.generate` (its classifier-free-guidance logits processor with
differential top-k), decoding by `utils.generation_utils.multimodal_decode` and the IBQ decoder.

Its code is written for transformers 4.48 (it imports `is_torch_fx_available`, gone in 5.x, and
reads `rope_scaling["type"]`), so it runs only in its own environment: `pip_requirements` pins
transformers 4.48.2 and `env_manager` is `uv` — `umm eval|infer` serve it from the environment
MLflow builds. Nothing of the checkout is edited or shimmed; upstream's torchvision, torchaudio,
accelerate and gradio pins are left out because none of the modules imported here uses them.

How requests become upstream calls:
- generation (t2i): the t2i template; the answer is started with `<|image start|>` and the image
  grid is fixed to `image_size / 16` tokens a side through upstream's own `target_height` /
  `target_width`, so the model is asked for exactly one square image; decoding stops at its end.
- editing (x2i): the x2i template with the reference image(s) tokenized in place of `<|IMAGE|>`;
  the new image has the first reference's token grid (upstream forces the same size for one
  reference; with several it lets the model choose, which this adapter does not).
- understanding: the image template with the question, text sampled with the card's text
  settings (top-k 1024, top-p 0.9); temperature 0 means greedy.

At scale (route `engine`): the model source is the URL of a running server of upstream's patched
vLLM 0.11 (`python src/patch/apply.py`, then vLLM's OpenAI server on the checkpoint, on a GPU).
Prompts, the image tokenizer and the decoding stay here; each request is one `/v1/completions`
call carrying what upstream's `utils/vllm_generation_utils.py` hands its engine: the prompt's token
ids, the unconditional prompt's (`uncond_prompt_token_ids`), the CFG and differential-sampling
settings (`vllm_xargs`, vLLM's field for `SamplingParams.extra_args`), and `stop_token_ids` (image
end for t2i / x2i, EOS for text); token ids come back with `return_token_ids`. That wire format
follows upstream's engine inputs and vLLM's documented request fields; it is tested against a
local stand-in server, not a patched vLLM (which needs CUDA).

Defaults (`configs/example_config_t2i.py`, `example_config_x2i.py`): CFG 5.0 (t2i) / 3.0 (x2i),
"no_text" unconditional prompt, image tokens top-k 5120, text top-k 1024 / top-p 0.9,
temperature 1.0, 1024 px (1:1 = 64×64 tokens), seed 6666, at most 5120 new tokens.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from PIL import Image

from model_flavors.upstream_backbone import UpstreamBackbone, checkout_requirement, local_folder, save_state, torch_dtype
from model_flavors.upstream_checkout import UpstreamCheckout, import_or_explain, private_package
from model_flavors.vllm_omni import VllmOmniClient
from umm_harness.core.backbone import ModelInfo, require_safetensors
from umm_harness.core.errors import ConfigError
from umm_harness.core.requests import InferenceParams, InferenceRequest, InferenceResult, TaskKind, decode_image

UPSTREAM = UpstreamCheckout(
    name="Emu3.5", repo="https://github.com/baaivision/Emu3.5", commit="8fcf1da48f9c5252fe0a0b8dc842e07b6efcd745",
    markers=("src/emu3p5/modeling_emu3.py", "src/utils/generation_utils.py",
             "src/tokenizer_emu3_ibq/tokenization_emu3.py"), env="UMM_EMU3_5_REPO",
)
# Its environment: upstream's requirements/transformers.txt + common.txt, less what the imported
# modules never use (torchvision, torchaudio, accelerate, gradio, imageio); torch: the base pin.
REQUIREMENTS = ("transformers==4.48.2", "tokenizers>=0.21,<0.22", "tiktoken>=0.12.0", "omegaconf==2.3.0",
                "einops>=0.7", "numpy>=1.21,<3", "protobuf>=3.20.0")
REFERENCE_FILE = "umm_emu3_5.json"
VQ_HUB_ID = "BAAI/Emu3.5-VisionTokenizer"
TOKENIZER_FILES = ("emu3.tiktoken", "emu3_vision_tokens.txt")
_ALIAS = "_umm_emu3p5"
TOKENS_PER_SIDE_PX = 16  # the IBQ tokenizer down-samples 16×
TEXT_SPECIALS = 3 + 205  # Emu3Tokenizer's own specials: <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|>
# Role tokens, as upstream's build_emu3p5 and configs name them.
ROLES = {"bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>",
         "eol_token": "<|extra_200|>", "eof_token": "<|extra_201|>", "tms_token": "<|extra_202|>",
         "img_token": "<|image token|>", "boi_token": "<|image start|>", "eoi_token": "<|image end|>",
         "bss_token": "<|extra_100|>", "ess_token": "<|extra_101|>", "bog_token": "<|extra_60|>",
         "eog_token": "<|extra_61|>", "boc_token": "<|extra_50|>", "eoc_token": "<|extra_51|>"}
SPECIAL = {"BOS": "bos_token", "EOS": "eos_token", "PAD": "pad_token", "EOL": "eol_token", "EOF": "eof_token",
           "TMS": "tms_token", "IMG": "img_token", "BOI": "boi_token", "EOI": "eoi_token", "BSS": "bss_token",
           "ESS": "ess_token", "BOG": "bog_token", "EOG": "eog_token", "BOC": "boc_token", "EOC": "eoc_token"}
# The prompt formats of the repository's configs (build_unc_and_template).
TEMPLATE = "<|extra_203|>You are a helpful assistant for {task} task. USER: {question} ASSISTANT: <|extra_100|>"
TEMPLATE_WITH_IMAGE = ("<|extra_203|>You are a helpful assistant for {task} task. USER: {question}<|IMAGE|> "
                       "ASSISTANT: <|extra_100|>")
UNCONDITIONAL = "<|extra_203|>You are a helpful assistant. USER:  ASSISTANT: <|extra_100|>"
UNCONDITIONAL_WITH_IMAGE = "<|extra_203|>You are a helpful assistant. USER: <|IMAGE|> ASSISTANT: <|extra_100|>"
UNDERSTANDING = "<|extra_203|>You are a helpful assistant. USER: <|IMAGE|>{question} ASSISTANT: <|extra_100|>"
IMAGE_SAMPLING = {"image_top_k": 5120, "image_top_p": 1.0, "image_temperature": 1.0}
TEXT_SAMPLING = {"text_top_k": 1024, "text_top_p": 0.9}
CFG = {"generation": 5.0, "editing": 3.0}
MAX_REFERENCES = 3  # example_config_x2i.py: "maximum 3 images"
ENGINE_START = "python src/patch/apply.py && vllm serve BAAI/Emu3.5-Image --port 8000  (CUDA, requirements/vllm.txt)"


@dataclass
class Emu3p5Sizes:
    """What prompts and images need beyond the checkpoints (`umm_emu3_5.json`): the published models' values."""

    resolution: int = 1024  # generation default: 1:1 = 64×64 tokens
    image_area: int = 1048576  # reference images are resized to this many pixels (smart_resize)
    repo_path: str | None = None


def import_upstream(repo: Path) -> SimpleNamespace:
    """The checkout's `src/` as the private package `_umm_emu3p5` and the five modules used here."""
    private_package(_ALIAS, repo / "src")
    names = {"model": "emu3p5", "vq": "vision_tokenizer.ibq", "tokenizer": "tokenizer_emu3_ibq.tokenization_emu3",
             "inputs": "utils.input_utils", "generation": "utils.generation_utils"}
    return SimpleNamespace(**{key: import_or_explain(f"{_ALIAS}.{module}", UPSTREAM, REQUIREMENTS)
                              for key, module in names.items()})


def load_tokenizer(api: SimpleNamespace, folder: Path):
    """Upstream's `Emu3Tokenizer` on `emu3.tiktoken` + `emu3_vision_tokens.txt`, roles set as build_emu3p5 sets them."""
    tokenizer = api.tokenizer.Emu3Tokenizer(vocab_file=str(folder / TOKENIZER_FILES[0]),
                                            special_tokens_file=str(folder / TOKENIZER_FILES[1]))
    for role, token in ROLES.items():
        setattr(tokenizer, role, token)
    return tokenizer


class Emu3p5(UpstreamBackbone):
    key: ClassVar[str] = "emu3_5"
    capabilities: ClassVar[frozenset[TaskKind]] = frozenset({"understanding", "generation", "editing"})
    requires: ClassVar[tuple[str, ...]] = (checkout_requirement(UPSTREAM),
                                           "its own environment (transformers==4.48.2, tiktoken): --env-manager uv")
    hub_ids: ClassVar[tuple[str, ...]] = ("BAAI/Emu3.5", "BAAI/Emu3.5-Image")
    route: ClassVar[str] = "upstream | engine"
    notes: ClassVar[str] = ("34B next-token model over IBQ image tokens (BAAI/Emu3.5-VisionTokenizer); editing = "
                            "x2i; at scale: a running server of upstream's patched vLLM (source = its URL)")
    pip_requirements: ClassVar[tuple[str, ...]] = REQUIREMENTS
    upstream: ClassVar[UpstreamCheckout] = UPSTREAM
    sizes_file: ClassVar[str] = REFERENCE_FILE
    env_manager: ClassVar[str] = "uv"

    def __init__(self, api: SimpleNamespace, model, vq, tokenizer, sizes: Emu3p5Sizes, info: ModelInfo,
                 engine: VllmOmniClient | None = None):
        """`model` is the local decoder, or None when `engine` (a patched vLLM server) runs it."""
        self.api, self.vq, self.tokenizer, self.sizes, self.info = api, vq.eval(), tokenizer, sizes, info
        self.model, self.engine = (model.eval() if model is not None else None), engine
        self.engine_model = engine.served_models(ENGINE_START)[0] if engine else None
        self.special_token_ids = {name: tokenizer.encode(getattr(tokenizer, role))[0] for name, role in SPECIAL.items()}

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def load(cls, source: str, *, revision: str | None = None, dtype: str = "float32", device: str = "cpu",
             repo_path: str | Path | None = None, vq_source: str = VQ_HUB_ID, allow_pickle: bool = False,
             checkpoint: str = "BAAI/Emu3.5-Image") -> Emu3p5:
        """`source`: a folder this adapter saved, or an Emu3.5 checkpoint (hub id or folder holding
        `emu3.tiktoken` and `emu3_vision_tokens.txt`) used with the IBQ tokenizer at `vq_source`;
        or the URL of a patched-vLLM server, with the tokenizer (and sizes) of `checkpoint`."""
        dtype_ = torch_dtype(dtype)
        engine = VllmOmniClient(source) if source.startswith(("http://", "https://")) else None
        local = checkpoint if engine else source
        sizes, repo, saved = cls.saved_sizes(Path(local), Emu3p5Sizes(), repo_path)
        api = import_upstream(repo)
        folder = local_folder(local, revision)
        model_folder, tokenizer_folder = (folder / "model", folder / "tokenizer") if saved else (folder, folder)
        vq_folder = folder / "vq" if saved else local_folder(vq_source)
        absent = [name for name in TOKENIZER_FILES if not (tokenizer_folder / name).is_file()]
        if absent:
            raise ConfigError(f"{tokenizer_folder} has no {', '.join(absent)}: an Emu3.5 checkpoint carries its "
                              f"tokenizer files ({', '.join(TOKENIZER_FILES)})")
        model = None
        if engine is None:
            require_safetensors(str(model_folder), allow_pickle)
            model = api.model.Emu3ForCausalLM.from_pretrained(str(model_folder), torch_dtype=dtype_,
                                                              attn_implementation="sdpa",
                                                              use_safetensors=not allow_pickle).to(device)
        vq = _load_vq(api, vq_folder, allow_pickle).to(device)
        return cls(api, model, vq, load_tokenizer(api, tokenizer_folder), sizes,
                   ModelInfo(backbone=cls.key, source=source, revision=revision, dtype=dtype), engine=engine)

    def save_pretrained(self, path: Path) -> None:
        if self.engine:
            raise ConfigError(f"emu3_5 behind {self.engine.url} has no local weights to save; log its checkpoint")
        path = Path(path)
        self.model.save_pretrained(path / "model", safe_serialization=True)
        tokenizer_folder = path / "tokenizer"
        tokenizer_folder.mkdir(parents=True, exist_ok=True)
        write_tiktoken(tokenizer_folder / TOKENIZER_FILES[0], self.tokenizer.mergeable_ranks)
        by_id = sorted(self.tokenizer.special_tokens, key=self.tokenizer.special_tokens.get)
        vision = by_id[TEXT_SPECIALS:]  # what emu3_vision_tokens.txt adds after the tokenizer's own
        (tokenizer_folder / TOKENIZER_FILES[1]).write_text("\n".join(vision) + "\n")
        save_state(self.vq, path / "vq" / "model.safetensors")
        (path / "vq" / "config.yaml").write_text(json.dumps(self.vq.umm_config, indent=2) + "\n")
        self.save_sizes(path)

    # -- requests -----------------------------------------------------------------------------

    def default_params(self, task: TaskKind) -> InferenceParams:
        if task == "understanding":
            return InferenceParams(seed=6666, max_new_tokens=1024, temperature=1.0)
        return InferenceParams(seed=6666, guidance_scale=CFG[task], temperature=1.0, image_size=self.sizes.resolution)

    def understand(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("understanding")
        results = []
        for request in requests:
            p = request.params.merged_over(self.default_params("understanding"))
            if len(request.images) > MAX_REFERENCES:
                raise ValueError(f"emu3_5 takes at most {MAX_REFERENCES} images per question; got {len(request.images)}")
            images = "".join(self._image_string(image) for image in request.images)
            prompt = UNDERSTANDING.format(question=request.prompt or "").replace("<|IMAGE|>", images)
            unconditional = UNCONDITIONAL_WITH_IMAGE.replace("<|IMAGE|>", images)
            text_sampling = {**TEXT_SAMPLING, "text_temperature": p.temperature or 1.0}
            sampling = {"max_new_tokens": p.max_new_tokens, "do_sample": bool(p.temperature),
                        "use_differential_sampling": bool(p.temperature), **text_sampling}
            start = time.perf_counter()
            out = self._generate(prompt, unconditional, p.seed, sampling, guidance=1.0)
            text = "".join(payload for kind, payload in out if kind == "text").strip()
            results.append(InferenceResult(text=text, params=p, elapsed_s=time.perf_counter() - start))
        return results

    def generate(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("generation")
        return [self._image_answer(request, "generation") for request in requests]

    def edit(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        self.check_supports("editing")
        return [self._image_answer(request, "editing") for request in requests]

    def _image_answer(self, request: InferenceRequest, task: TaskKind) -> InferenceResult:
        p = request.params.merged_over(self.default_params(task))
        p = p.model_copy(update={"steps": None, "max_new_tokens": None, "image_guidance_scale": None})
        if not p.temperature:
            raise ValueError("emu3_5 samples image tokens: temperature must be > 0")
        if task == "generation":
            if p.image_size % TOKENS_PER_SIDE_PX:
                raise ValueError(f"emu3_5 image sizes are multiples of {TOKENS_PER_SIDE_PX}px; got image_size={p.image_size}")
            side = p.image_size // TOKENS_PER_SIDE_PX
            grid, images = (side, side), ""
            prompt, unconditional = TEMPLATE.format(task="t2i", question=request.prompt or ""), UNCONDITIONAL
        else:
            if not 1 <= len(request.images) <= MAX_REFERENCES:
                raise ValueError(f"emu3_5 edits with 1 to {MAX_REFERENCES} reference images; got {len(request.images)}")
            images = "".join(self._image_string(image) for image in request.images)
            grid = self._grid(decode_image(request.images[0]))
            prompt = TEMPLATE_WITH_IMAGE.format(task="x2i", question=request.prompt or "").replace("<|IMAGE|>", images)
            unconditional = UNCONDITIONAL_WITH_IMAGE.replace("<|IMAGE|>", images)
            p = p.model_copy(update={"image_size": None})
        height, width = grid
        size_tokens = len(self.tokenizer.encode(f"{height}*{width}", add_special_tokens=False))
        sampling = {"max_new_tokens": size_tokens + 1 + height * (width + 1), "do_sample": True,
                    "use_differential_sampling": True, "text_temperature": p.temperature, **TEXT_SAMPLING,
                    **{**IMAGE_SAMPLING, "image_temperature": p.temperature}}
        start = time.perf_counter()
        out = self._generate(prompt, unconditional, p.seed, sampling, guidance=p.guidance_scale, target=grid,
                             answer_start=ROLES["boi_token"])
        produced = [payload for kind, payload in out if kind == "image"]
        if not produced:
            raise RuntimeError(f"emu3_5 produced no complete image for {request.prompt!r}")
        return InferenceResult(images=produced[:1], params=p, elapsed_s=time.perf_counter() - start)

    def _grid(self, image: Image.Image) -> tuple[int, int]:
        width, height = self.api.inputs.smart_resize(image.convert("RGB"), self.sizes.image_area).size
        return height // TOKENS_PER_SIDE_PX, width // TOKENS_PER_SIDE_PX

    def _image_string(self, image: Any) -> str:
        config = SimpleNamespace(image_area=self.sizes.image_area)
        return self.api.inputs.build_image(decode_image(image).convert("RGB"), config, self.tokenizer, self.vq)

    def _generate(self, prompt: str, unconditional: str, seed: int, sampling: dict[str, Any], *, guidance: float,
                  target: tuple[int, int] | None = None, answer_start: str = "") -> list[tuple[str, Any]]:
        """One upstream `generate` call (its config namespace filled as inference.py fills it) on
        `prompt + answer_start`, the answer (with `answer_start`) decoded by upstream's `multimodal_decode`;
        upstream's progress prints go to the debug log."""
        import torch

        device = self.model.device if self.model is not None else next(self.vq.parameters()).device
        ids = self.tokenizer.encode(prompt + answer_start, return_tensors="pt", add_special_tokens=False).to(device)
        unconditional_ids = self.tokenizer.encode(unconditional, return_tensors="pt", add_special_tokens=False).to(device)
        run = SimpleNamespace(
            streaming=False, classifier_free_guidance=guidance, unconditional_type="no_text",
            target_height=target[0] if target else None, target_width=target[1] if target else None,
            special_token_ids=self.special_token_ids,
            sampling_params={"use_cache": True, "top_k": 131072, "top_p": 1.0, "temperature": 1.0, "num_beams": 1,
                             "guidance_scale": 1.0, **IMAGE_SAMPLING, **sampling})
        printed = io.StringIO()
        with torch.random.fork_rng(devices=[]), torch.inference_mode(), contextlib.redirect_stdout(printed):
            torch.manual_seed(seed)
            if self.engine:
                stop = self.special_token_ids["EOI" if target else "EOS"]
                # the engine extends both prompts with each sampled token, so both start the answer alike
                started = self.tokenizer.encode(answer_start, add_special_tokens=False) if answer_start else []
                body = engine_request(self.engine_model, ids[0].tolist(), unconditional_ids[0].tolist() + started,
                                      run, seed=seed, stop_token_ids=[stop], image_area=self.sizes.image_area)
                tokens = engine_tokens(self.engine.post("/v1/completions", body))
            else:
                tokens = next(self.api.generation.generate(run, self.model, self.tokenizer, ids, unconditional_ids))
            text = answer_start + self.tokenizer.decode(tokens, skip_special_tokens=False)
            out = self.api.generation.multimodal_decode(text, self.tokenizer, self.vq)
        if printed.getvalue().strip():
            import logging

            logging.getLogger(__name__).debug("emu3_5 upstream: %s", printed.getvalue().strip()[-2000:])
        return out


def engine_request(model: str, prompt_ids: list[int], unconditional_ids: list[int], run: SimpleNamespace, *,
                   seed: int, stop_token_ids: list[int], image_area: int) -> dict[str, Any]:
    """A `/v1/completions` body carrying what upstream's vllm_generation_utils gives its engine."""
    sampling = run.sampling_params
    extra = {"guidance_scale": run.classifier_free_guidance, "text_top_k": sampling["text_top_k"],
             "text_top_p": sampling["text_top_p"], "text_temperature": sampling["text_temperature"],
             "visual_top_k": sampling["image_top_k"], "visual_top_p": sampling["image_top_p"],
             "visual_temperature": sampling["image_temperature"], "width": run.target_width,
             "height": run.target_height, "area": image_area if run.target_width else None}
    return {"model": model, "prompt": prompt_ids, "uncond_prompt_token_ids": unconditional_ids,
            "max_tokens": sampling["max_new_tokens"], "top_k": sampling["top_k"], "top_p": sampling["top_p"],
            "temperature": sampling["temperature"] if sampling.get("do_sample", True) else 0.0, "seed": seed,
            "stop_token_ids": stop_token_ids, "return_token_ids": True, "skip_special_tokens": False,
            "vllm_xargs": {k: v for k, v in extra.items() if v is not None}}


def engine_tokens(body: Any) -> list[int]:
    """The generated token ids of a `/v1/completions` answer asked with `return_token_ids`."""
    try:
        tokens = body["choices"][0]["token_ids"]
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(f"the Emu3.5 server's answer has no choices[0].token_ids (it needs vLLM >= 0.10.2 "
                           f"for return_token_ids): {str(body)[:300]}") from None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise RuntimeError(f"the Emu3.5 server's token_ids are not a list of integers: {str(tokens)[:300]}")
    return tokens


def _load_vq(api: SimpleNamespace, folder: Path, allow_pickle: bool):
    """Upstream's IBQ from `config.yaml` and `model.safetensors` (the hub's `model.ckpt` is a pickle: opt-in)."""
    import torch
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    vq = api.vq.IBQ(**config)
    vq.umm_config = config
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif allow_pickle:
        state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
    else:
        raise ConfigError(f"{folder} holds the IBQ tokenizer as a pickle (model.ckpt), which can run code when "
                          f"loaded; pass backbone_options: {{allow_pickle: true}} if you trust it")
    vq.load_state_dict(state, strict=True)
    return vq


def write_tiktoken(path: Path, ranks: dict[bytes, int]) -> None:
    import base64

    path.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                            for token, rank in sorted(ranks.items(), key=lambda item: item[1])))


# -- tiny model for tests ---------------------------------------------------------------------

TEXT_VOCAB = 151643  # Emu3.5's special tokens start here (tokenization_emu3.SPECIAL_START_ID); the logits
# processor hard-codes their ids, so a tiny model keeps the real layout: a small trained BPE, padded.


def tiny_ranks() -> dict[bytes, int]:
    """tiktoken ranks: the 256 bytes in GPT-2's order (upstream's logits processor expects '*' at 9 and
    '0'-'9' at 15-24), the merges of the locally trained tiny BPE, then unused fillers up to TEXT_VOCAB."""
    from umm_harness.core.tiny_tokenizer import train_tiny_tokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    order = printable + [b for b in range(256) if b not in printable]
    to_byte = {chr(b if b in printable else 256 + order.index(b) - len(printable)): b for b in range(256)}
    ranks = {bytes([b]): rank for rank, b in enumerate(order)}
    merges = json.loads(train_tiny_tokenizer({}).backend_tokenizer.to_str())["model"]["merges"]
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    for index in range(TEXT_VOCAB - len(ranks)):
        ranks[b"<unused%d>" % index] = len(ranks)  # never a piece of the split text: unreachable
    return ranks


def build_tiny(path: Path, seed: int = 0, repo_path: str | Path | None = None, codes: int = 64) -> Emu3p5:
    """A random Emu3.5 of the real upstream classes (decoder 32 hidden × 2 layers over the real
    151,854-token layout + `codes` visual tokens, a 64-code IBQ with 16× down-sampling: 64 px ↔ 4×4
    tokens), saved at `path`. Runs where the upstream code imports (its own environment)."""
    import torch

    repo = UPSTREAM.resolve(repo_path)
    api = import_upstream(repo)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer_folder = path / "tokenizer"
    tokenizer_folder.mkdir(exist_ok=True)
    write_tiktoken(tokenizer_folder / TOKENIZER_FILES[0], tiny_ranks())
    vision = ["<|image token|>", "<|image start|>", "<|image end|>", *(f"<|visual token {i:06d}|>" for i in range(codes))]
    (tokenizer_folder / TOKENIZER_FILES[1]).write_text("\n".join(vision) + "\n")
    tokenizer = load_tokenizer(api, tokenizer_folder)
    torch.manual_seed(seed)
    config = api.model.Emu3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                  max_position_embeddings=1024, attention_dropout=0.0)
    config._attn_implementation = "sdpa"
    model = api.model.Emu3ForCausalLM(config)
    block = {"double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
             "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    vq_config = {"ddconfig": block, "n_embed": codes, "embed_dim": 256}  # decode_image reads 256 channels
    vq = api.vq.IBQ(**vq_config)
    vq.umm_config = vq_config
    sizes = Emu3p5Sizes(resolution=64, image_area=64 * 64, repo_path=str(repo))
    backbone = Emu3p5(api, model, vq, tokenizer, sizes, ModelInfo(backbone=Emu3p5.key, source=str(path)))
    backbone.save_pretrained(path)
    return backbone


if __name__ == "__main__":  # python -m model_flavors.emu3p5 <folder> <checkout>: the tiny build, in its environment
    import sys

    build_tiny(Path(sys.argv[1]), repo_path=sys.argv[2])
