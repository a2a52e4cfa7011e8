"""A real `mlflow models serve` process answering understanding and generation over JSON, in
every payload shape MLflow's scoring server accepts."""

import pytest
import requests
from PIL import Image

from tests.serving import invoke, registered_and_served
from umm_harness.core.requests import decode_image, encode_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_janus):
    with registered_and_served(tiny_janus, "janus-pro-tiny", tmp_path_factory.mktemp("serve")) as (url, _):
        yield url


def test_serves_understanding_and_generation_and_survives_bad_payloads(server):
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


def _payloads(rows: list[dict], params: dict) -> dict[str, dict]:
    """The same rows and request params in each of MLflow's JSON payload shapes."""
    columns = list(rows[0])
    shapes = {
        "dataframe_records": {"dataframe_records": rows},
        "dataframe_split": {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}},
        "instances": {"instances": rows},
        "inputs (rows)": {"inputs": rows},
        "inputs (columns)": {"inputs": {c: [r[c] for r in rows] for c in columns}},
    }
    return {name: {**payload, "params": params} for name, payload in shapes.items()}


SCENE = encode_png(Image.new("RGB", (64, 64), "red"))
ROWS = {  # the README's rows
    "understanding": [{"task": "understanding", "prompt": "Is there a red circle?", "images": [SCENE]},
                      {"task": "understanding", "prompt": "What colour is the shape?", "images": [SCENE]}],
    "generation": [{"task": "generation", "prompt": "a photo of a red circle", "images": []},
                   {"task": "generation", "prompt": "a photo of a blue square", "images": []}],
    "rows with their own params": [
        {"task": "generation", "prompt": "a photo of a red circle", "images": [], "params": {"seed": 7}},
        {"task": "generation", "prompt": "a photo of a red circle", "images": [], "params": '{"seed": 8}'}],
}


@pytest.mark.parametrize("rows", ROWS)
def test_every_mlflow_payload_shape_gives_the_same_predictions(server, rows):
    answers = {}
    for shape, payload in _payloads(ROWS[rows], {"seed": 3}).items():
        response = requests.post(f"{server}/invocations", json=payload, timeout=120)
        assert response.status_code == 200, (shape, response.text[:500])
        answers[shape] = [{k: v for k, v in p.items() if k != "elapsed_s"} for p in response.json()["predictions"]]
    reference = answers.pop("dataframe_records")
    assert len(reference) == 2 and reference[0] != reference[1]
    for shape, answer in answers.items():
        assert answer == reference, shape


def test_instances_with_a_different_number_of_images_per_row_is_a_400(server):
    """MLflow turns `instances` rows into one array per column, which needs every row of a request
    to hold as many images (the README says so); mixed rows go as `inputs` or `dataframe_records`."""
    mixed = [ROWS["understanding"][0], ROWS["generation"][0]]
    assert requests.post(f"{server}/invocations", json={"instances": mixed}, timeout=120).status_code == 400
    for key in ("inputs", "dataframe_records"):
        assert requests.post(f"{server}/invocations", json={key: mixed}, timeout=120).status_code == 200, key
