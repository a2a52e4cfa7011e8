"""`reca`: reconstruction alignment (RecA), self-supervised.

The model is asked to generate an image while its prompt holds that same image's
*understanding* embeddings (vision encoder + aligner output at the image placeholder tokens)
in place of a caption; the loss is the generation head's cross-entropy over the image's VQ
codes (for Janus, `model_flavors.janus_training.image_generation_loss`; for BAGEL, the flow-matching
MSE on its VAE latents). No captions are needed: any image set will do, here the training split's
understanding images or a parquet file of images.

The text after the image is one of a fixed set of "describe everything" instructions, drawn per
image, as RecA does (its `get_recon_prompt_list()`: templates that list what a full description
covers — quality, style, colours, shapes, sizes, textures, counts, text, positions, background). The
set below is this project's own wording of that idea, not a copy of RecA's list; the draw depends
on the run seed and the image id only. A recipe can pin one instruction instead (`reca.prompt`). Dense semantic embeddings are a
richer "prompt" than a short caption, so this aligns what the model sees with what it draws.

The understanding encoder stays fixed by default (`reca.train_understanding_encoder`), so it
acts as the target-side semantic reference (and with it, on a mixture-of-transformers backbone such
as BAGEL, the understanding expert: only the generation expert trains, as in RecA on BAGEL); the
image-target encoder (VQ, VAE) is always frozen. Other
objectives (e.g. `understanding`) can be mixed in through the recipe's `objectives`.
"""

from __future__ import annotations

from torch import nn

from training import sft
from training.recipe import TrainRecipe
from umm_harness.core.seeding import sample_seed
from umm_harness.core.training import Trainable

_ASPECTS = "quality, style, colors, shapes, sizes, textures, counts, any text, positions and background"
DESCRIBE_PROMPTS: tuple[str, ...] = (
    f"Describe every visual element of this image: {_ASPECTS}.",
    f"List what the image shows, covering {_ASPECTS}.",
    "Give a complete account of the picture: its overall quality and style, every object with its color, "
    "shape, size and texture, how many there are, any writing, where each thing is, and the background.",
    "Catalogue the image in full detail: rendering quality, artistic style, palette, geometric forms, "
    "relative sizes, surface materials, object counts, visible text, layout and setting.",
    "Write an exhaustive description of this image, leaving out no object, color, shape, texture, "
    "number, word, position or background detail.",
    "Break the image down: sharpness, style, color scheme, outlines, proportions, surfaces, quantities, "
    "lettering, spatial arrangement, scenery.",
    "Report everything visible: image quality, look and feel, hues, forms, scale, materials, how many of "
    "each thing, text, placement, environment.",
    "Inventory the picture: each object with its color, shape, size, texture and position, their number, "
    "any text, the style and quality of the image, and what lies behind them.",
    "Explain the composition of this image in detail: what is where, in which colors and shapes, at what "
    "size, with which textures, how many, with what text, in front of what background.",
    "Describe the image as precisely as possible: clarity, style, colors, geometry, dimensions, surfaces, "
    "counts, text, layout, backdrop.",
    "Enumerate the visual facts of this picture: quality, genre, colors, contours, sizes, finishes, "
    "quantities, captions, positions, surroundings.",
    "Tell me everything in this image, from its overall style and quality down to each object's color, "
    "shape, size, texture, count and place, plus any text and the background.",
    "Provide a full visual breakdown: technical quality, aesthetic, palette, shapes, scale, textures, "
    "numbers of objects, typography, spatial relations, scene.",
    "Detail the picture: resolution and focus, style, dominant and accent colors, forms, proportions, "
    "material look, object count, written words, arrangement, setting.",
    "Go through the image part by part and say what each part holds: colors, shapes, sizes, textures, "
    "how many, any text, where it sits, and what surrounds it.",
    "Summarise every attribute of this image: quality, style, color, shape, size, texture, quantity, "
    "text, position, background.",
    "Characterise this image completely, covering its visual quality, style, colors, shapes, sizes, "
    "textures, quantities, text, object positions and background.",
    "Record all that can be seen here: how clean the image is, its style, its colors, the shapes and "
    "sizes of things, their surfaces, their number, any lettering, their layout and the backdrop.",
    "Map out the image: for each element its color, form, scale, texture and location; then the count of "
    "elements, any text, the style, the quality and the background.",
    "Describe this picture thoroughly, naming its style and quality, every color, shape, size and "
    "texture, how many objects there are, any text, where things are and what is behind them.",
    "Leave nothing out: describe the image's quality, style, colors, shapes, sizes, textures, counts, "
    "text, positions and background.",
    "Note every detail of the image: clarity, style, hues, shapes, dimensions, surfaces, quantities, "
    "words, arrangement and environment.",
    "Give a dense, complete caption of this image covering colors, shapes, sizes, textures, counts, "
    "text, positions, background, style and quality.",
    "Analyse the image's visual content in full: style and quality, palette, geometry, scale, material, "
    "number of items, text, spatial layout, scene.",
    "Describe all the details you notice in this image.",
    "Describe the image from top to bottom, mentioning every object, color and shape.",
    "Point out everything in the picture and say what it looks like and where it is.",
    "Walk through the whole image and describe every element in it.",
    "What does this image contain? Describe each element's appearance and position, and the background.",
    "Describe this image exhaustively: objects, colors, shapes, sizes, textures, counts, text, layout, "
    "background, style and quality.",
)


def describe_prompt(seed: int, example_id: str) -> str:
    """The "describe everything" instruction for one image (a pure function of the seed and the id)."""
    return DESCRIBE_PROMPTS[sample_seed(seed, f"reca-prompt:{example_id}") % len(DESCRIBE_PROMPTS)]


def prepare(backbone: Trainable, recipe: TrainRecipe) -> nn.Module:
    backbone.freeze(*backbone.frozen_groups)
    if not recipe.reca.train_understanding_encoder:
        backbone.freeze("vision_encoder")
        if "understanding_expert" in backbone.parameter_groups():  # a mixture-of-transformers backbone (BAGEL)
            backbone.freeze("understanding_expert")
    return backbone.model


def rebuild(base: Trainable, state: dict, recipe: TrainRecipe) -> Trainable:
    return sft.rebuild(base, state, recipe)
