"""Architectures. Adding one: a new module that uses @register_model, plus its import here."""

from trainer.models import efficientnet  # noqa: F401  (efficientnet_b0, efficientnet_lite0)
from trainer.models.registry import Detector, InitError, create_model, list_models, model_spec

__all__ = ["Detector", "InitError", "create_model", "list_models", "model_spec"]
