"""Architectures. Adding one: a new module that uses @register_model, plus its import here."""

from trainer.models import efficientnet  # noqa: F401  (efficientnet_b0, efficientnet_lite0)
from trainer.models import efficientnet_mid  # noqa: F401  (efficientnet_lite0_mid)
from trainer.models import efficientnet_stats  # noqa: F401  (efficientnet_lite0_stats)
from trainer.models import convnext  # noqa: F401  (convnext_tiny)
from trainer.models import resnet_se  # noqa: F401  (resnet_se)
from trainer.models import effnet_vit  # noqa: F401  (effnet_vit)
from trainer.models.registry import Detector, DetectorWithCAM, InitError, create_model, list_models, model_spec

__all__ = ["Detector", "DetectorWithCAM", "InitError", "create_model", "list_models", "model_spec"]
