"""umm-harness: evaluation and post-training of unified multimodal models on MLflow."""

from umm_harness.core import __version__

__all__ = ["__version__"]
