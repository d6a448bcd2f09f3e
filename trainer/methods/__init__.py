"""Training methods. Adding one: a new module that uses @register_method, plus its import here."""

from trainer.methods import erm  # noqa: F401
from trainer.methods import gradreg  # noqa: F401
from trainer.methods import fgsm_at  # noqa: F401
from trainer.methods import dual_attacker  # noqa: F401
from trainer.methods import fgsm_rs  # noqa: F401
from trainer.methods import pgd_at  # noqa: F401
from trainer.methods import trades  # noqa: F401
from trainer.methods.registry import TrainingMethod, create_method, list_methods, method_class, register_method

__all__ = ["TrainingMethod", "create_method", "list_methods", "method_class", "register_method"]
