"""A small byte-level BPE tokenizer trained locally, standing in for a hub tokenizer in tests.

Tiny random-weight models of the real classes need a real tokenizer with the model's special
tokens; training one on a fixed corpus keeps everything offline and deterministic.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Words the built-in `shapes` suite and everyday prompts use, so they tokenize compactly.
_CORPUS_WORDS = """
a an the photo of one two three four five six zero yes no is there are how many what color
colour which where left right above below of and on in with to it this that image picture
circle circles square squares triangle triangles red green blue yellow purple orange black
white gray grey brown pink cat dog person car tree house sky water answer word question
describe draw generate show please number shape shapes object objects count
""".split()


def _corpus() -> list[str]:
    lines = [" ".join(_CORPUS_WORDS[i : i + 8]) for i in range(0, len(_CORPUS_WORDS), 8)]
    lines += [f"Is there a {c} {s}? How many {s}s are there? What color is the {s}?"
              for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]
    lines += [str(n) for n in range(100)]
    return lines * 4


def train_tiny_tokenizer(
    special_tokens: dict[str, str],
    extra_special_tokens: dict[str, str] | None = None,
    additional_tokens: list[str] | None = None,
    vocab_size: int = 640,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer; `special_tokens` maps bos/eos/pad/unk roles to strings."""
    named = list(special_tokens.values()) + list((extra_special_tokens or {}).values())
    specials = list(dict.fromkeys(named + (additional_tokens or [])))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens=extra_special_tokens or {},
        additional_special_tokens=additional_tokens or [],
        **special_tokens,
    )
