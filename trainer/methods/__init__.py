"""Training methods. Adding one: a new module that uses @register_method, plus its import here."""

from trainer.methods import erm  # noqa: F401  (registers erm)
from trainer.methods.registry import create_method, list_methods

__all__ = ["create_method", "list_methods"]
