"""What every batching understanding backbone must do, and the pictures it is asked about."""

from PIL import Image, ImageDraw

from umm_harness.core.backbone import Backbone
from umm_harness.core.requests import InferenceRequest


def circle_scene(color: str, size: int = 96) -> Image.Image:
    """A filled circle of `color` in the top-left quarter of a white square."""
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((10, 10, size // 2, size // 2), fill=color)
    return image


def assert_batching_changes_no_reply(backbone: Backbone, questions: list[InferenceRequest]) -> None:
    one_by_one = [backbone.understand([question])[0].text for question in questions]
    batched = [result.text for result in backbone.understand(questions)]
    assert batched == one_by_one
    assert len(set(batched)) > 1  # random weights, but not a constant answer


def assert_each_request_keeps_its_token_budget(backbone: Backbone, question: InferenceRequest) -> None:
    """A short budget beside a longer one in a batch cuts only its own reply."""
    shorter = question.model_copy(update={"params": question.params.model_copy(update={"max_new_tokens": 2})})
    short, long = backbone.understand([shorter, question])
    assert long.text.startswith(short.text) and len(long.text) > len(short.text)
    assert short.params.max_new_tokens == 2
