"""Architectures. Adding one: a new module that uses @register_model, plus its line in ARCHITECTURES.

The table names every architecture without importing torch, so `trainer --help` can list them
in a fraction of a second; the modules (and torch) load on first use of the registry."""

import importlib

# architecture -> the module (in this package) that registers it
ARCHITECTURES = {
    "efficientnet_b0": "efficientnet",
    "efficientnet_lite0": "efficientnet",
    "efficientnet_lite2": "efficientnet",
    "efficientnet_lite0_mid": "efficientnet_mid",
    "efficientnet_lite0_stats": "efficientnet_stats",
    "convnext_tiny": "convnext",
    "resnet_se": "resnet_se",
    "effnet_vit": "effnet_vit",
}
_LAZY = ("Detector", "DetectorWithCAM", "InitError", "create_model", "model_spec")

__all__ = ["ARCHITECTURES", "list_models", *_LAZY]


def list_models() -> list[str]:
    return sorted(ARCHITECTURES)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in sorted(set(ARCHITECTURES.values())):
        importlib.import_module(f"{__name__}.{module}")
    from trainer.models import registry

    return getattr(registry, name)
