"""`trainer fit`'s settings: FitConfig and its defaults, how they are layered (fit_config),
config files (.toml, .yaml or a run's config.json) checked as the command line checks its
options, what --resume may change, and what a --device value names."""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from trainer.methods import method_class
from trainer.models import model_spec


class RunError(Exception):
    """A run that cannot be done as asked, described in one line."""


AUGMENTS = ("standard", "uploads", "uploads-no-h264", "uploads-h264", "none")  # uploads*: trainer.data.augment.RECIPES


@dataclass
class FitConfig:
    data: str
    out: str
    # Validation split from another dataset folder (None: data's own), e.g. train on self-blended
    # LFW faces and select epochs on FaceForensics++ videos the model never trains on.
    val_data: str | None = None
    arch: str = "efficientnet_lite0"
    method: str = "erm"
    init: str | None = None  # None: the architecture's default (random, or offline ImageNet weights)
    epochs: int | None = None  # None: the method's default, else 10
    batch_size: int = 32  # the global batch: with N processes (torchrun) each takes batch_size / N
    epoch_size: int | None = None  # samples drawn per epoch (None: the training set's size), for large sets
    optimizer: str | None = None  # adamw or sgd; None: the method's default, else adamw
    lr: float | None = None  # None: the method's default, else 3e-4 (adamw) / 1e-3 (sgd)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine (after a linear warm-up) or constant
    warmup_epochs: float = 1.0
    patience: int | None = None  # early stopping: epochs without a better validation AUC
    size: int | None = None  # None: the architecture's input size
    augment: str = "standard"  # one of AUGMENTS: standard (flip, rotation, colour, JPEG, blur), uploads (trainer.data.augment)
    sbi: bool = False  # add self-blended fakes made on the fly from the real training crops
    paired: bool = False  # batches of fakes beside their own reals (trainer.data.pairing)
    # Backbone module paths (e.g. conv_stem, bn1, blocks.0) whose weights and batch-norm
    # statistics stay as initialised: with a few dozen training videos, pretrained early and
    # middle features generalise better than fine-tuned ones.
    freeze: list[str] = field(default_factory=list)
    amp: bool = True  # bfloat16 autocast, on CUDA only
    sync_bn: bool = False  # several processes: batch-norm statistics over the global batch (SyncBatchNorm, CUDA)
    checkpoint_every: int | None = None  # None: the method's default, else 0 (off)
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # the method's own options

    def resolved(self) -> "FitConfig":
        """A copy with every None filled: method defaults first, then global ones."""
        values = asdict(self)
        defaults = method_class(self.method).defaults
        for key, value in defaults.items():
            if key == "lr" and values["optimizer"] not in (None, defaults.get("optimizer", "adamw")):
                continue  # a method's rate is for its own optimizer (gradreg's 1e-3 SGD rate is 3x AdamW's)
            if values.get(key) is None:
                values[key] = value
        values["epochs"] = values["epochs"] or 10
        values["optimizer"] = values["optimizer"] or "adamw"
        if values["lr"] is None:
            values["lr"] = 3e-4 if values["optimizer"] == "adamw" else 1e-3
        if values["checkpoint_every"] is None:
            values["checkpoint_every"] = 0
        spec = model_spec(self.arch)
        values["size"] = values["size"] or spec.input_size
        values["init"] = values["init"] or spec.default_init
        return FitConfig(**values)


FIELDS = {f.name for f in fields(FitConfig)}
# Config-file values, checked as the command line checks its options: (kind, smallest allowed).
_INTS = {"epochs": 1, "batch_size": 1, "epoch_size": 1, "patience": 1, "size": 16, "checkpoint_every": 0, "workers": 0, "seed": None}
_FLOATS = {"lr": 0.0, "weight_decay": 0.0, "momentum": 0.0, "warmup_epochs": 0.0}
_STRINGS = ("data", "out", "val_data", "arch", "method", "init", "optimizer", "schedule", "augment", "device")
_BOOLS = ("sbi", "amp", "paired", "sync_bn")
# What --resume may change: how long and where it runs, not what it learns or from what.
RESUMABLE = ("epochs", "patience", "workers", "device", "out")


def load_config_file(path: Path) -> dict[str, Any]:
    """FitConfig values from a TOML, YAML or JSON file (a run's config.json repeats that run)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise RunError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use .toml") from None
            try:
                values = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise RunError(f"{path}: cannot parse ({' '.join(str(exc).split())})") from None
        elif path.suffix == ".json":
            values = json.loads(text)
            values = values.get("fit", values)
        else:
            raise RunError(f"{path}: config files must be .toml, .yaml or .json")
    except FileNotFoundError:
        raise RunError(f"{path}: no such config file") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise RunError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(values, dict):
        raise RunError(f"{path}: expected a table of settings")
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise RunError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    return {key: _checked(path, key, value) for key, value in values.items()}


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Method options from key=value pairs; values that parse as JSON numbers or booleans become them."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects key=value, not {pair!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def fit_config(given: dict[str, Any], options: Sequence[str] = (), config_file: Path | None = None,
               resume: bool = False) -> FitConfig:
    """A run's settings, layered: a resumed run's own config.json, then `config_file`, then what
    was `given` (None: not given), then `options` (key=value) over the method options so far."""
    out = given.get("out")
    # A resumed run starts from its own settings, so `--out RUN --resume` is enough.
    saved_run = Path(out) / "config.json" if resume and out is not None else None
    values = load_config_file(saved_run) if saved_run is not None and saved_run.is_file() else {}
    values.update(load_config_file(config_file) if config_file else {})
    values.update({key: value for key, value in given.items() if value is not None})
    if options:
        values["options"] = {**values.get("options", {}), **parse_options(options)}
    for key in ("data", "out"):
        if values.get(key) is None:
            raise ValueError(f"--{key} is required (on the command line or in --config)")
    # Absolute, so that `--resume` and `--config RUN/config.json` work from any folder.
    values["data"], values["out"] = str(Path(values["data"]).absolute()), str(values["out"])
    if values.get("val_data") is not None:
        values["val_data"] = str(Path(values["val_data"]).absolute())
    model_spec(values.get("arch", "efficientnet_lite0"))
    method_class(values.get("method", "erm"))
    return FitConfig(**values)


def _checked(path: Path, key: str, value: Any) -> Any:
    """A config-file value of the right type and range (None keeps the default)."""
    def bad(expected: str) -> RunError:
        return RunError(f"{path}: {key} must be {expected}, not {value!r}")

    if value is None:
        return None
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int) or (_INTS[key] is not None and value < _INTS[key]):
            raise bad("an integer" + (f" >= {_INTS[key]}" if _INTS[key] is not None else ""))
    elif key in _FLOATS:
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < _FLOATS[key]:
            raise bad(f"a number >= {_FLOATS[key]:g}")
        return number
    elif key in _STRINGS and not isinstance(value, str):
        raise bad("a string")
    elif key in _BOOLS and not isinstance(value, bool):
        raise bad("true or false")
    elif key == "freeze" and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise bad("a list of module paths")
    elif key == "options" and not isinstance(value, dict):
        raise bad("a table of method options")
    return value


def resume_differences(saved: dict[str, Any], config: FitConfig) -> list[str]:
    """The settings that differ from the run being resumed, other than those --resume may change."""
    current = asdict(config)
    # A setting added after the run was made (e.g. sync_bn) counts as its default there.
    defaults = {f.name: f.default for f in fields(FitConfig) if f.default is not MISSING}

    def same(key: str) -> bool:
        if key in ("data", "val_data") and saved.get(key) and current[key]:
            return Path(saved[key]).absolute() == Path(current[key]).absolute()  # runs made before paths were stored absolute
        return saved.get(key, defaults.get(key)) == current[key]

    return [f"{key} {saved.get(key)!r} → {current[key]!r}" for key in sorted(current)
            if key not in RESUMABLE and not same(key)]


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when torch sees it, else CPU), cpu or cuda; ValueError for the impossible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)

