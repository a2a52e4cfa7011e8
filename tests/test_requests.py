"""InferenceRequest validation: each violation names the field that is wrong."""

import base64
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from umm_harness.core.requests import InferenceParams, InferenceRequest, decode_image, encode_png


def _png_b64(color="red") -> str:
    return encode_png(Image.new("RGB", (8, 8), color))


def test_generation_needs_a_prompt():
    with pytest.raises(ValidationError, match="prompt: a generation request needs a non-empty prompt"):
        InferenceRequest(task="generation", prompt="   ")


def test_editing_needs_a_prompt_and_an_image():
    with pytest.raises(ValidationError, match="editing needs a prompt and at least one image"):
        InferenceRequest(task="editing", prompt="make it blue")
    with pytest.raises(ValidationError, match="editing needs a prompt and at least one image"):
        InferenceRequest(task="editing", images=[_png_b64()])
    assert InferenceRequest(task="editing", prompt="make it blue", images=[_png_b64()]).images[0].size == (8, 8)


def test_understanding_needs_a_prompt_or_an_image():
    with pytest.raises(ValidationError, match="understanding needs a prompt or at least one image"):
        InferenceRequest(task="understanding")
    assert InferenceRequest(task="understanding", images=[_png_b64()]).prompt is None
    assert InferenceRequest(task="understanding", prompt="hi").images == []


def test_unknown_task_is_refused():
    with pytest.raises(ValidationError, match="task"):
        InferenceRequest(task="painting", prompt="x")


def test_images_accept_pil_paths_base64_and_data_urls(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), "blue").save(path)
    request = InferenceRequest(
        task="understanding",
        images=[Image.new("L", (4, 4)), str(path), _png_b64(), "data:image/png;base64," + _png_b64()],
    )
    assert [img.mode for img in request.images] == ["RGB"] * 4


def test_bad_image_names_its_index():
    with pytest.raises(ValidationError, match=r"images\[1\]: not a file path and not valid base64"):
        InferenceRequest(task="understanding", images=[_png_b64(), "%%%not-base64%%%"])
    garbage = base64.b64encode(b"definitely not a png").decode()
    with pytest.raises(ValidationError, match=r"images\[0\]: bytes are not a readable image"):
        InferenceRequest(task="understanding", images=[garbage])


def test_params_are_checked_by_name():
    with pytest.raises(ValidationError, match="max_new_tokens"):
        InferenceRequest(task="understanding", prompt="x", params={"max_new_tokens": 0})
    with pytest.raises(ValidationError, match="cfg"):
        InferenceRequest(task="understanding", prompt="x", params={"cfg": 3})


def test_params_merge_over_defaults_field_by_field():
    defaults = InferenceParams(seed=0, guidance_scale=5.0, temperature=1.0)
    merged = InferenceParams(seed=7).merged_over(defaults)
    assert merged == InferenceParams(seed=7, guidance_scale=5.0, temperature=1.0)


def test_png_round_trip_is_lossless():
    image = Image.effect_noise((16, 16), 50).convert("RGB")
    assert decode_image(encode_png(image)).tobytes() == image.tobytes()
    with pytest.raises(ValueError, match="expected a PIL image"):
        decode_image(3.14)
    raw = io.BytesIO()
    image.save(raw, format="PNG")
    assert decode_image(raw.getvalue()).size == (16, 16)


def test_base64_longer_than_a_file_name_is_decoded_not_looked_up():
    image = Image.new("RGB", (128, 128), "white")  # its base64 PNG is 256..4096 characters long
    for level in (6, 1):
        encoded = encode_png(image, compress_level=level)
        assert 255 < len(encoded) < 4096
        assert decode_image(encoded).tobytes() == image.tobytes()
