"""A real `mlflow models serve` process answering understanding and generation over JSON."""

import mlflow
import pytest

from model_flavors import flavor
from tests.serving import invoke, served
from umm_harness.core.requests import decode_image, encode_png

pytestmark = pytest.mark.slow


@pytest.fixture
def server(workspace, tiny_janus):
    mlflow.set_experiment("serve-test")
    with mlflow.start_run():
        flavor.log_model(tiny_janus, registered_model_name="janus-pro-tiny")
    with served("models:/janus-pro-tiny/1", cwd=workspace) as url:
        yield url


def test_serves_understanding_and_generation_and_survives_bad_payloads(server):
    from PIL import Image

    scene = encode_png(Image.new("RGB", (64, 64), "red"))
    answer = invoke(server, [{"task": "understanding", "prompt": "Is there a red circle?", "images": [scene]}])
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["predictions"][0]["text"], str)

    picture = invoke(server, [{"task": "generation", "prompt": "a photo of a red circle", "images": []}],
                      params={"seed": 3, "guidance_scale": 4.0})
    assert picture.status_code == 200, picture.text
    image = decode_image(picture.json()["predictions"][0]["images"][0])
    assert image.size == (64, 64)

    bad_payloads = [
        ([{"task": "generation", "prompt": "", "images": []}], "prompt"),
        ([{"task": "understanding", "prompt": "what?", "images": ["not*base64"]}], "images[0]"),
        ([{"task": "teleport", "prompt": "x", "images": []}], "task"),
    ]
    for records, named in bad_payloads:
        response = invoke(server, records)
        assert 400 <= response.status_code < 500, response.text
        assert named in response.json()["message"]

    again = invoke(server, [{"task": "generation", "prompt": "a photo of a red circle", "images": []}],
                    params={"seed": 3, "guidance_scale": 4.0})
    assert again.status_code == 200
    assert again.json()["predictions"][0]["images"] == picture.json()["predictions"][0]["images"]
