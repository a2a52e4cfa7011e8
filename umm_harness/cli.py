"""The `umm` command line. Every config error exits 2 with one readable line."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from umm_harness.core.backbone import UnsupportedTask
from umm_harness.core.errors import ConfigError

log = logging.getLogger("umm_harness")


def _fail(message: str) -> None:
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")  # names may hold line breaks
    click.echo(f"umm: error: {one_line}", err=True)
    sys.exit(2)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()  # its generation-config chatter is not for our users
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
        import mlflow  # noqa: F401 - importing it sets its loggers' levels: set ours after

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # store migrations etc.
        _quiet_library_notices()
    from umm_harness.runner import progress_enabled

    if not progress_enabled():
        transformers.utils.logging.disable_progress_bar()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # MLflow reads it per call


def _quiet_library_notices() -> None:
    """What libraries say to the developers of the code calling them (deprecations, DeepSpeed's
    accelerator guess and its info chatter) is not for the user of a command; `-v` shows it."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # DeepSpeed sets its logger's level and handler when transformers imports it; a filter stays.
    logging.getLogger("DeepSpeed").addFilter(_deepspeed_warnings_only)


def _deepspeed_warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING and not record.getMessage().startswith("Setting accelerator")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Evaluate and post-train unified multimodal models, tracked in MLflow."""
    _setup_logging(verbose)


def _open_store() -> None:
    """Every command that logs opens the store first (serialised creation, clear errors)."""
    from umm_harness.store import open_store

    open_store()


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@cli.command("eval")
@click.option("--recipe", help="YAML recipe (projects/*.yaml); flags override it.")
@click.option("--model", help="models:/name/version, models:/name@alias, a folder, a hub id or tiny:<name>.")
@click.option("--backbone", help="Backbone key, when the model does not say.")
@click.option("--revision", help="Hub revision of the model.")
@click.option("--suite", help="Suite or benchmark name(s), comma separated.")
@click.option("--limit", type=int, help="At most this many samples per benchmark (0 = all).")
@click.option("--seed", type=int, help="Run seed; every sample's seed derives from it.")
@click.option("--batch-size", help="Requests per model call, or 'auto' (largest that fits, remembered).")
@click.option("--data-dir", help="Offline copy of the benchmark data.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--device")
@click.option("--attn-implementation", type=click.Choice(["auto", "flash_attention_2", "sdpa", "eager"]),
              help="Attention kernel (transformers backbones); auto: flash_attention_2 where it runs, else sdpa.")
@click.option("--compile/--no-compile", default=None, help="torch.compile the language model's forward.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--env-manager", type=click.Choice(["local", "uv", "virtualenv"]),
              help="Run the model here (local) or in its own MLflow-built environment (default: the model's).")
@click.option("--experiment", help="MLflow experiment (ignored under `mlflow run`).")
@click.option("--register-as", help="Registered model name for a model that is not registered yet.")
@click.option("--stage", type=click.Choice(["all", "generate", "score"]), help="Two-stage benchmarks: one stage only.")
@click.option("--from-run", help="With --stage score: the parent run of the generate stage.")
@click.option("--guidance-scale", type=float)
@click.option("--max-new-tokens", type=int)
@click.option("--executor", type=click.Choice(["local", "ray"]),
              help="Where generation runs: this process (local) or a Ray Data actor pool (ray; `ray:` in a recipe).")
@click.option("--cache-dir", help="Folder of the result caches (default $UMM_HOME/cache); shared by all nodes.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, help="Data-parallel ranks on this machine (torchrun).")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, help="Nodes; run the same command on each.")
@click.option("--node-rank", type=click.IntRange(min=0), default=0, help="This node's number (0 .. nnodes-1).")
@click.option("--rdzv-endpoint", help="host:port where the nodes meet (torchrun c10d rendezvous).")
def eval_command(recipe: str | None, guidance_scale: float | None, max_new_tokens: int | None, nproc: int,
                 nnodes: int, node_rank: int, rdzv_endpoint: str | None, **flags: Any) -> None:
    """Evaluate a model on a suite and log it to MLflow."""
    from umm_harness.config import load_recipe
    from umm_harness.evaluate import evaluate

    # `mlflow run` passes every declared parameter, unset ones as "" (and limit 0 = all).
    overrides = {key: (None if value == "" else value) for key, value in flags.items()}
    if overrides.get("limit") == 0:
        overrides["limit"] = None
    params = _params({"guidance_scale": guidance_scale, "max_new_tokens": max_new_tokens})
    if params:
        overrides["params"] = params
    loaded = load_recipe(Path(recipe) if recipe else None, overrides)  # checked once, before any rank starts
    from umm_harness.distributed import Launch, relaunch

    launch = Launch(nproc, nnodes, node_rank, rdzv_endpoint)
    if nnodes > 1 and not rdzv_endpoint:
        raise ConfigError("--nnodes > 1 needs --rdzv-endpoint host:port (the same on every node)")
    if node_rank >= nnodes:
        raise ConfigError(f"--node-rank {node_rank} is not below --nnodes {nnodes}")
    _open_store()
    if launch.distributed and "RANK" not in os.environ:
        sys.exit(relaunch(launch, _without_launch_options(click.get_current_context().obj["argv"])))
    summary = evaluate(loaded)
    if summary is None:  # a data-parallel rank other than 0
        return
    from umm_harness.runs import where_to_look

    click.echo(f"run {summary.run_id}: {summary.model_name} version {summary.model_version}")
    for key in sorted(summary.metrics):
        click.echo(f"  {key:40s} {summary.metrics[key]:.4f}")
    for line in where_to_look(summary.run_id, summary.model_name, summary.model_version):
        click.echo(line)


_LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")


def _without_launch_options(args: list[str]) -> list[str]:
    """The command line each rank runs: the launcher's own options removed."""
    kept, skip_next = [], False
    for arg in args:
        if skip_next or arg.startswith(tuple(f"{option}=" for option in _LAUNCH_OPTIONS)):
            skip_next = False
            continue
        if arg in _LAUNCH_OPTIONS:
            skip_next = True
            continue
        kept.append(arg)
    return kept


@cli.command("infer")
@click.option("--model", default="tiny:janus-pro", show_default=True)
@click.option("--backbone")
@click.option("--task", "task_kind", type=click.Choice(["understanding", "generation", "editing"]), required=True)
@click.option("--prompt")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), help="Input image (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--guidance-scale", type=float)
@click.option("--max-new-tokens", type=int)
@click.option("--out", type=click.Path(path_type=Path), help="Where to write a generated image (PNG).")
@click.option("--track", is_flag=True, help="Also record this call as an MLflow run.")
@click.option("--env-manager", type=click.Choice(["local", "uv", "virtualenv"]),
              help="Run the model here (local) or in its own MLflow-built environment (default: the model's).")
def infer_command(model: str, backbone: str | None, task_kind: str, prompt: str | None, images: tuple[Path, ...],
                  seed: int, guidance_scale: float | None, max_new_tokens: int | None, out: Path | None,
                  track: bool, env_manager: str | None) -> None:
    """One request, no benchmark: print the answer or write the image."""
    from pydantic import ValidationError

    from umm_harness.infer import infer

    for image in images:
        if not image.is_file():
            raise ConfigError(f"--image '{image}' does not exist")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out '{out}': folder '{out.parent}' does not exist")
    if out is not None and out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; give a file name (e.g. {out / 'image.png'})")
    params = _params({"seed": seed, "guidance_scale": guidance_scale, "max_new_tokens": max_new_tokens})
    if track:
        _open_store()
    try:
        from umm_harness.core.requests import InferenceRequest

        request = InferenceRequest(task=task_kind, prompt=prompt, images=[str(p) for p in images], params=params)
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    result = infer(model, request, backbone=backbone, track=track, env_manager=env_manager)
    if result.text is not None:
        click.echo(result.text)
    for index, image in enumerate(result.images):
        target = out or Path(f"umm-{task_kind}-{seed}.png")
        if len(result.images) > 1:
            target = target.with_name(f"{target.stem}_{index}{target.suffix}")
        image.save(target)
        click.echo(f"wrote {target}")


@cli.command("train")
@click.option("--recipe", help="YAML recipe (projects/train_*.yaml); flags override it.")
@click.option("--model", help="Registered base: models:/name/version or models:/name@alias.")
@click.option("--method", help="sft | lora | reca | irg | unicot")
@click.option("--steps", type=int)
@click.option("--lr", type=float)
@click.option("--zero-stage", type=int)
@click.option("--nproc", type=int, help="Ranks on this machine (torchrun / deepspeed launcher).")
@click.option("--seed", type=int)
@click.option("--env-manager", type=click.Choice(["local", "uv", "virtualenv"]),
              help="Train in this process's environment (local) or in the model's own, built by MLflow "
                   "(default: what the model was logged with).")
def train_command(recipe: str | None, **flags: Any) -> None:
    """Post-train a registered model with DeepSpeed; register the result as its next version."""
    from training.recipe import TrainRecipe
    from training.run import train
    from umm_harness.config import load_recipe

    train_recipe = load_recipe(Path(recipe) if recipe else None, flags, TrainRecipe)
    _open_store()
    result = train(train_recipe)
    click.echo(f"run {result.run_id}: {result.registered_name} version {result.version} "
               f"(from version {result.parent_version}), {result.steps} steps, final loss {result.losses[-1]:.4f}")


@cli.command("loop")
@click.option("--recipe", help="YAML recipe (projects/loop_*.yaml); flags override it.")
@click.option("--model", help="The base model, as `umm eval --model` takes it.")
@click.option("--limit", type=int)
def loop_command(recipe: str | None, **flags: Any) -> None:
    """Evaluate the base, post-train, evaluate the new version, compare, promote."""
    from umm_harness.config import load_recipe
    from umm_harness.loop import LoopRecipe, run_loop

    loop_recipe = load_recipe(Path(recipe) if recipe else None, flags, LoopRecipe)
    _open_store()
    result = run_loop(loop_recipe)
    click.echo(result.decision.comparison.table().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    for line in result.decision.reasons:
        click.echo(f"  {line}")
    click.echo("times: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items()))
    verdict = "promoted to champion" if result.decision.promoted else "not promoted"
    click.echo(f"version {result.new_version} (from {result.base_version}): {verdict}")
    if not result.decision.promoted:
        sys.exit(1)


@cli.command("compare")
@click.option("--recipe", help="YAML recipe; flags override it.")
@click.option("--model-name", help="Registered model name.")
@click.option("--versions", help="Comma-separated versions (default: the two latest).")
@click.option("--baseline", help="Version the deltas are taken against (default: the first).")
@click.option("--suite")
@click.option("--seed", type=int)
@click.option("--limit", type=int)
@click.option("--bootstrap", type=int, help="Bootstrap resamples for the intervals.")
def compare_command(recipe: str | None, versions: str | None, **flags: Any) -> None:
    """Registered versions side by side on one suite, with paired bootstrap intervals."""
    from umm_harness.compare import CompareRecipe, compare
    from umm_harness.config import load_recipe

    overrides = {**flags, "versions": [v.strip() for v in versions.split(",") if v.strip()] if versions else None}
    compare_recipe = load_recipe(Path(recipe) if recipe else None, overrides, CompareRecipe)
    _open_store()
    comparison = compare(compare_recipe)
    click.echo(comparison.table().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    click.echo(f"comparison run {comparison.run_id}; eval runs: "
               + ", ".join(f"v{v}={r}" for v, r in comparison.eval_runs.items()))


@cli.command("promote")
@click.option("--recipe", help="YAML recipe; flags override it.")
@click.option("--model-name", help="Registered model name.")
@click.option("--candidate", help="Version or alias to promote (default: challenger).")
@click.option("--baseline", help="Compare against this version instead of the champion.")
@click.option("--gate", "gates", multiple=True, help="'<metric> >= champion + <margin>' (repeatable).")
@click.option("--max-regression", type=float, help="No metric may drop by more than this.")
@click.option("--suite")
@click.option("--seed", type=int)
@click.option("--limit", type=int)
@click.option("--history", is_flag=True, help="Print the champion's history and exit.")
def promote_command(recipe: str | None, gates: tuple[str, ...], max_regression: float | None, history: bool,
                    **flags: Any) -> None:
    """Move alias `champion` to a version only when the gate holds (exit 1 when it does not)."""
    from umm_harness.config import load_recipe
    from umm_harness.promote import PromoteRecipe, Requirement, promote
    from umm_harness.promote import history as promotion_history

    promote_recipe = load_recipe(Path(recipe) if recipe else None, flags, PromoteRecipe)
    _open_store()
    if history:
        entries = promotion_history(promote_recipe.model_name)
        if not entries:
            click.echo(f"{promote_recipe.model_name}: no promotion yet")
        for entry in entries:
            previous = f"v{entry['previous_champion']}" if entry.get("previous_champion") else "(no champion)"
            click.echo(f"{entry['time']}  {previous} -> v{entry['champion']}  "
                       f"promotion run {entry.get('promotion_run', 'not recorded')}, "
                       f"comparison run {entry.get('comparison_run', 'not recorded')}")
        return
    gate = promote_recipe.gate
    if gates:
        gate = gate.model_copy(update={"require": [Requirement.parse(g) for g in gates]})
    if max_regression is not None:
        gate = gate.model_copy(update={"max_regression": max_regression})
    decision = promote(promote_recipe.model_copy(update={"gate": gate}))
    for line in decision.reasons:
        click.echo(f"  {line}")
    if not decision.promoted:
        click.echo(f"refused: version {decision.candidate} stays where it is; champion unchanged", err=True)
        sys.exit(1)
    click.echo(f"promoted: {promote_recipe.model_name} version {decision.candidate} is now champion")


@cli.group("models")
def models_group() -> None:
    """Backbones and built-in tiny models."""


@models_group.command("init-tiny")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Folder (default: $UMM_HOME/tiny/<name>).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--repo-path", type=click.Path(path_type=Path),
              help="The upstream checkout a tiny upstream model (bagel, omnigen2) is built from and runs on.")
def init_tiny(name: str, out: Path | None, seed: int, repo_path: Path | None) -> None:
    """Build a tiny random-weight model with a locally trained tokenizer."""
    from model_flavors.registry import tiny_builder
    from umm_harness.core.home import umm_home

    folder = out or umm_home() / "tiny" / name
    tiny_builder(name)(folder, seed=seed, **({"repo_path": repo_path} if repo_path else {}))
    click.echo(str(folder))


@models_group.command("list")
def list_models() -> None:
    """Every backbone with its capabilities, route, environment, status and what it needs installed."""
    from model_flavors.registry import ALIASES, BACKBONES, backbone_class

    click.echo(f"{'key':12s} {'tasks':34s} {'route':18s} {'environment':13s} {'status':13s} needs")
    for key in sorted(BACKBONES):
        cls = backbone_class(key)
        info = cls.describe()
        # Blocked backbones need their repository's own pins; others need the harness's plus their extras.
        extras = len(cls.pip_requirements)
        environment = ("upstream pins" if getattr(cls, "upstream_pins", None)
                       else f"own ({cls.env_manager})" if cls.env_manager != "local"
                       else f"harness+{extras}" if extras else "harness")
        status = getattr(cls, "status", "runs here")
        click.echo(f"{key:12s} {', '.join(info['capabilities']):34s} {info['route']:18s} {environment:13s} "
                   f"{status:13s} {', '.join(info['requires'])}")
    for alias, key in sorted(ALIASES.items()):
        click.echo(f"{alias:12s} → {key}")


def main(argv: list[str] | None = None) -> None:
    from umm_harness import interrupts

    try:
        with interrupts.handled():
            cli.main(args=argv, prog_name="umm", standalone_mode=False, obj={"argv": list(argv or sys.argv[1:])})
    except interrupts.Interrupted as exc:
        killed = interrupts.end_interrupted_runs(exc)
        runs = f"; run(s) {', '.join(killed)} marked KILLED" if killed else ""
        click.echo(f"umm: interrupted by {exc}{runs}; rerun the same command to resume", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("umm: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "umm"
        _fail(f"{command}: {exc.format_message()}")
    except (ConfigError, UnsupportedTask) as exc:
        _fail(str(exc))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - only a tracking server that stopped answering is turned into a line
        if not _server_unreachable(exc):
            raise
        import shlex

        import mlflow

        reason = "connection refused" if "Connection refused" in str(exc) else str(exc).splitlines()[0][-160:]
        command = shlex.join(["umm", *(argv if argv is not None else sys.argv[1:])])
        _fail(f"the tracking server {mlflow.get_tracking_uri()} did not answer after MLflow's retries ({reason}); "
              f"finished work is cached: once it is back, resume with `{command}`")


def _server_unreachable(exc: BaseException) -> bool:
    """MLflow's REST client gave up on the tracking server (its message names the request)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and str(exc).startswith("API request to ") and \
        any(sign in str(exc) for sign in ("Max retries exceeded", "Connection refused", "Connection aborted",
                                          "Read timed out", "Failed to establish"))


if __name__ == "__main__":
    main()
