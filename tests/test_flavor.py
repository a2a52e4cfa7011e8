"""The `umm` flavor: save, log, register, and load back, also where this repo is not importable."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from PIL import Image

from model_flavors import flavor
from tests.reload import predict_in_fresh_process
from umm_harness.core.requests import decode_image, encode_png

ROWS = pd.DataFrame([
    {"task": "understanding", "prompt": "Is there a red circle?", "images": []},
    {"task": "generation", "prompt": "a photo of a red circle", "images": []},
])



def test_saved_model_records_what_it_is(tiny_janus, tmp_path):
    flavor.save_model(tiny_janus, tmp_path / "m")
    conf = Model.load(tmp_path / "m" / "MLmodel")
    umm = conf.flavors["umm"]
    assert umm["backbone"] == "janus_pro"
    assert umm["capabilities"] == ["generation", "understanding"]
    assert umm["dtype"] == "float32" and umm["weights"] == "weights" and len(umm["weights_digest"]) == 64
    assert conf.flavors["python_function"]["loader_module"] == "model_flavors.flavor"
    params = {p.name for p in conf.signature.params}
    assert params == {"seed", "guidance_scale", "image_guidance_scale", "steps", "max_new_tokens", "temperature",
                      "image_size"}
    assert (tmp_path / "m" / "code" / "umm_harness" / "core" / "requests.py").is_file()
    with pytest.raises(MlflowException, match="already exists"):
        flavor.save_model(tiny_janus, tmp_path / "m")


def test_reference_models_do_not_copy_weights(tiny_janus, tmp_path):
    flavor.save_model(tiny_janus, tmp_path / "ref", copy_weights=False)
    assert not (tmp_path / "ref" / "weights").exists()
    umm = Model.load(tmp_path / "ref" / "MLmodel").flavors["umm"]
    assert umm["source"] == tiny_janus.info.source and umm["weights"] is None
    assert flavor.load_local(tmp_path / "ref").info.source == tiny_janus.info.source


def test_round_trip_in_a_fresh_process_gives_the_same_outputs(tiny_janus, tmp_path):
    model_dir = tmp_path / "m"
    flavor.save_model(tiny_janus, model_dir)
    in_process = flavor.UmmPyfuncModel(tiny_janus).predict(ROWS, params={"seed": 5})
    fresh = predict_in_fresh_process({"janus": (model_dir, ROWS.to_dict("records"), {"seed": 5})}, tmp_path)["janus"]
    assert fresh["module"].startswith(str(model_dir / "code"))
    assert fresh["rows"][0]["text"] == in_process.iloc[0]["text"]
    assert fresh["rows"][1]["images"] == list(in_process.iloc[1]["images"])


def test_pyfunc_rows_get_consecutive_seeds(tiny_janus):
    model = flavor.UmmPyfuncModel(tiny_janus)
    twice = pd.DataFrame([{"task": "generation", "prompt": "a red circle"}] * 2)
    first, second = (np.asarray(decode_image(images[0]), dtype=int)
                     for images in model.predict(twice, params={"seed": 10})["images"])
    alone = np.asarray(decode_image(model.predict(twice.iloc[1:], params={"seed": 11})["images"].iloc[0][0]), dtype=int)
    assert np.abs(first - second).max() > 50  # different seeds, different images
    assert np.abs(second - alone).max() <= 2  # row 1 of seed 10 is seed 11 (up to batch rounding)


@pytest.mark.parametrize(("rows", "params", "message"), [
    ([{"task": "generation", "prompt": ""}], {}, "row 0: prompt: a generation request needs a non-empty prompt"),
    ([{"task": "drawing", "prompt": "x"}], {}, "row 0: task"),
    ([{"task": "understanding", "prompt": "x", "images": ["***"]}], {}, r"row 0: images\[0\]: not valid base64"),
    ([{"task": "editing", "prompt": "x", "images": [encode_png(Image.new("RGB", (4, 4)))]}], {},
     "cannot do 'editing'"),
    ([{"task": "generation", "prompt": "x"}], {"guidance_scale": -1.0}, "params: guidance_scale"),
    ([{"prompt": "x"}], {}, "missing the required column 'task'"),
    # sizes a served request may not ask for: one request must not hold a worker for minutes
    ([{"task": "generation", "prompt": "x" * 16_001}], {}, "row 0: prompt has 16001 characters; at most 16000"),
    ([{"task": "understanding", "prompt": "x", "images": [encode_png(Image.new("RGB", (4, 4)))] * 9}], {},
     "row 0: 9 images; at most 8"),
    ([{"task": "understanding", "prompt": "x", "images": [encode_png(Image.new("1", (5000, 4000)))]}], {},
     r"row 0: images\[0\] is 5000x4000"),
    ([{"task": "understanding", "prompt": "x"}], {"max_new_tokens": 10**6}, "max_new_tokens: 1000000 is above"),
    ([{"task": "generation", "prompt": "x"}], {"image_size": 100_000}, "image_size: 100000 is above"),
    ([{"task": "generation", "prompt": "x"}], {"steps": 10**4}, "steps: 10000 is above"),
])
def test_bad_rows_raise_invalid_parameter_errors(tiny_janus, rows, params, message):
    with pytest.raises(MlflowException, match=message) as caught:
        flavor.UmmPyfuncModel(tiny_janus).predict(pd.DataFrame(rows), params=params)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_log_and_register_then_load_by_models_uri(tiny_janus, workspace):
    mlflow.set_experiment("flavor-test")
    with mlflow.start_run():
        info = flavor.log_model(tiny_janus, registered_model_name="janus-pro-tiny")
    assert info.registered_model_version == 1
    loaded = flavor.load_model("models:/janus-pro-tiny/1")
    assert loaded.key == "janus_pro"
    question = {"task": "understanding", "prompt": "Is there a red circle?"}
    expected = flavor.UmmPyfuncModel(tiny_janus).predict(pd.DataFrame([question]))["text"].iloc[0]
    pyfunc = mlflow.pyfunc.load_model("models:/janus-pro-tiny/1")
    assert pyfunc.predict(pd.DataFrame([question]))["text"].iloc[0] == expected


def test_mixed_rows_answer_strict_json_as_the_scoring_server_writes_it(tiny_janus, tmp_path):
    """A generation row has no text: it must be JSON null, not a bare NaN (which strict parsers,
    e.g. JavaScript's JSON.parse, refuse). MLflow's scoring server parses and writes with these
    two functions; a real server round trip is in tests/test_serve.py."""
    import io

    from mlflow.pyfunc.scoring_server import infer_and_parse_data, predictions_to_json

    flavor.save_model(tiny_janus, tmp_path / "m")
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    payload = {"dataframe_records": [{"task": "generation", "prompt": "a red circle", "images": []},
                                     {"task": "understanding", "prompt": "which shape?", "images": []}]}
    out = io.StringIO()
    predictions_to_json(model.predict(infer_and_parse_data(payload, model.metadata.get_input_schema()),
                                      params={"seed": 1, "max_new_tokens": 2}), out)

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    generated, answered = json.loads(out.getvalue(), parse_constant=refuse)["predictions"]
    assert generated["text"] is None and len(generated["images"]) == 1
    assert isinstance(answered["text"], str) and answered["images"] == []


def test_a_param_the_adapter_refuses_is_a_400_with_its_reason_and_no_stack_trace(tiny_janus, tmp_path):
    """Through MLflow's own request handler (what `mlflow models serve` runs), in this process."""
    from mlflow.pyfunc.scoring_server import invocations

    flavor.save_model(tiny_janus, tmp_path / "m")
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    body = json.dumps({"dataframe_records": [{"task": "generation", "prompt": "a red circle", "images": []}],
                       "params": {"image_size": 16}})
    with pytest.raises(MlflowException) as raised:  # the server's wrapper answers it as JSON
        invocations(body, "application/json", model, model.metadata.get_input_schema())
    error = json.loads(raised.value.serialize_as_json())
    assert raised.value.get_http_status_code() == 400 and "64px images only" in error["message"], error
    assert "stack_trace" not in error, error
