"""Training methods. Adding one: a new module that uses @register_method, plus its line in METHODS.

The table names every method without importing torch (for `trainer --help`); the modules load
on first use of the registry."""

import importlib

# method -> the module (in this package) that registers it
METHODS = {
    "erm": "erm",
    "gradreg": "gradreg",
    "fgsm-at": "fgsm_at",
    "dual-attacker": "dual_attacker",
    "fgsm-rs": "fgsm_rs",
    "pgd-at": "pgd_at",
    "trades": "trades",
}
_LAZY = ("TrainingMethod", "create_method", "method_class", "register_method")

__all__ = ["METHODS", "list_methods", *_LAZY]


def list_methods() -> list[str]:
    return sorted(METHODS)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in dict.fromkeys(METHODS.values()):
        importlib.import_module(f"{__name__}.{module}")
    from trainer.methods import registry

    return getattr(registry, name)
