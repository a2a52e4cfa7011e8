"""`umm infer`: one request against any model reference, optionally tracked as a run."""

from __future__ import annotations

import mlflow

from umm_harness.model_ref import resolve_model
from umm_harness.runs import start_top_level_run
from umm_harness.core.requests import InferenceRequest, InferenceResult
from umm_harness.tracking import log_batch


def infer(reference: str, request: InferenceRequest, *, backbone: str | None = None,
          track: bool = False, env_manager: str | None = None) -> InferenceResult:
    model = resolve_model(reference, backbone=backbone, env_manager=env_manager)
    model.backbone.check_supports(request.task)
    try:
        result = model.backbone.run([request])[0]
    finally:
        model.close()
    if track:
        # The one run layout (runs.py): the experiment the user chose, else the current one.
        with start_top_level_run(f"infer {request.task}"):
            log_batch(params={"model": reference, "task": request.task, "prompt": (request.prompt or "")[:500],
                              **{f"params.{k}": str(v) for k, v in result.params.model_dump(exclude_none=True).items()}},
                      tags={"umm.backbone": model.backbone.key, "umm.stage": "infer",
                            "umm.env_manager": env_manager or "default"},
                      metrics={"elapsed_s": result.elapsed_s})
            if result.text is not None:
                mlflow.log_text(result.text, "output.txt")
            for index, image in enumerate(result.images):
                mlflow.log_image(image, f"images/output_{index}.png")
    return result
