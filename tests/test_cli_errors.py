"""Wrong recipes and arguments: exit code 2, one readable line on stderr, nothing run."""

import subprocess
import time

import pytest

from tests.conftest import umm
from umm_harness.cli import main


def _run_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI's own `main`, in this process (a subprocess per case would cost ~5 s of imports)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exited.value.code, captured.out, captured.err)


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "real_accelerator" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("umm: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("args", "fragments"), [
    (["eval", "--backbone", "dalle", "--model", "some-org/some-model"], ["unknown backbone 'dalle'"]),
    (["eval", "--suite", "imagenet"], ["unknown suite 'imagenet'", "shapes"]),
    (["eval", "--limit", "-3"], ["field 'limit'", "greater than or equal to 0"]),
    (["eval", "--limit", "many"], ["--limit", "'many' is not a valid integer"]),
    (["eval", "--batch-size", "0"], ["field 'batch_size': must be a positive integer or 'auto', got '0'"]),
    (["eval", "--model", "./no/such/folder"], ["model './no/such/folder': no such file or directory"]),
    (["eval", "--model", "models:/never-registered/1"], ["not in the registry"]),
    (["eval", "--model", "tiny:dragon"], ["no tiny model named 'dragon'"]),
    (["eval", "--data-dir", "/no/such/dir"], ["field 'data_dir'", "does not exist"]),
    (["eval", "--recipe", "missing.yaml"], ["recipe file 'missing.yaml' does not exist"]),
    (["eval", "--unknown-flag"], ["umm eval: No such option '--unknown-flag'"]),
    (["infer", "--task", "editing", "--prompt", "x"], ["editing needs a prompt and at least one image"]),
    (["infer", "--task", "generation", "--prompt", "x", "--image", "nope.png"], ["--image 'nope.png' does not exist"]),
    (["models", "init-tiny", "dragon"], ["no tiny model named 'dragon'"]),
    (["eval", "--device", "banana"], ["field 'device'", "not a device torch knows"]),
    (["eval", "--device", "cuda:7"], ["field 'device'", "device 'cuda:7'"]),
    (["infer", "--task", "generation", "--prompt", "x", "--out", "no/such/dir/x.png"],
     ["--out 'no/such/dir/x.png': folder 'no/such/dir' does not exist"]),
    (["infer", "--task", "generation", "--prompt", "x", "--out", "."], ["--out '.' is a folder"]),
    (["promote", "--model-name", "nobody", "--history"], ["registered model 'nobody' does not exist"]),
])
def test_bad_arguments_exit_2_with_one_line(workspace, capsys, args, fragments):
    _one_line_error(_run_in_process(capsys, *args), *fragments)


def test_the_installed_entry_point_reports_the_same_way(workspace):
    _one_line_error(umm("eval", "--suite", "imagenet", cwd=workspace), "unknown suite 'imagenet'")
    assert not (workspace / "mlruns").exists() or not any((workspace / "mlruns").iterdir())


def test_bad_recipe_files_name_the_file_and_field(workspace, capsys):
    (workspace / "typo.yaml").write_text("model: tiny:janus-pro\nsuit: shapes\n")
    _one_line_error(_run_in_process(capsys, "eval", "--recipe", "typo.yaml"), "typo.yaml", "field 'suit'",
                    "unknown field")
    (workspace / "types.yaml").write_text("seed: [1, 2]\nlimit: -1\n")
    _one_line_error(_run_in_process(capsys, "eval", "--recipe", "types.yaml"), "types.yaml", "1 more problem")
    (workspace / "broken.yaml").write_text("model: [unclosed\n")
    _one_line_error(_run_in_process(capsys, "eval", "--recipe", "broken.yaml"), "broken.yaml: not valid YAML")
    (workspace / "list.yaml").write_text("- a\n- b\n")
    _one_line_error(_run_in_process(capsys, "eval", "--recipe", "list.yaml"), "a recipe must be a mapping")


def test_unsupported_task_in_infer_is_a_clear_error(workspace, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(workspace / "a.png")
    _one_line_error(_run_in_process(capsys, "infer", "--task", "editing", "--prompt", "bluer", "--image", "a.png"),
                    "janus_pro' cannot do 'editing'")


def test_umm_home_pointing_at_a_file_is_one_line(workspace, capsys, monkeypatch):
    (workspace / "a-file").write_text("not a folder")
    for home in ("a-file", "a-file/below"):
        monkeypatch.setenv("UMM_HOME", str(workspace / home))
        _one_line_error(_run_in_process(capsys, "eval", "--limit", "1"), "UMM_HOME", "is a file, not a folder")


def test_a_hub_model_that_cannot_be_downloaded_is_one_line_without_retrying(workspace, tmp_path):
    """No hub here: the endpoint is a closed local port (refused at once), the cache is empty."""
    from umm_harness.core.ports import free_port

    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf_home")}
    started = time.monotonic()
    result = umm("eval", "--model", "deepseek-community/Janus-Pro-1B", "--limit", "1", cwd=workspace, env=env)
    _one_line_error(result, "not in the local Hugging Face cache", "cannot be reached", env["HF_ENDPOINT"])
    assert time.monotonic() - started < 90  # transformers alone retries for about a minute, then OSError
    offline = umm("eval", "--model", "deepseek-community/Janus-Pro-1B", cwd=workspace, env={**env, "HF_HUB_OFFLINE": "1"})
    _one_line_error(offline, "HF_HUB_OFFLINE")

