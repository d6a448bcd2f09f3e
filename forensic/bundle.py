"""The bundle format: a folder of ONNX models plus `manifest.json`, the contract between
`trainer export` (which writes it) and `forensic` (which reads it).

manifest.json, schema version 2 (a bundle that does not use what version 2 added is written as
version 1, so that an older forensic still reads it):
    schema_version   1, or 2 where input.mirror_average is true
    name             bundle name
    created          ISO-8601 UTC time of export
    models           [{name, file, sha256, arch, weight, temperature, bias, outputs,
                      gradient_graph, training}]: weights combine the models' probabilities;
                      temperature (optional, default 1.0) and bias (optional, default 0.0)
                      calibrate one member before the members are averaged (Platt scaling:
                      P(fake) = sigmoid((fake - real logit) / temperature + bias), then the
                      bundle's temperature); gradient_graph is {file,
                      sha256, cosine} (inputs pixels, labels; outputs loss, grad) or
                      {unavailable: reason}
    input            {size, color_order "RGB", layout "NCHW", pixel_range [0, 1], mean, std,
                      normalize_in_graph}: when normalize_in_graph is true the model takes
                      pixels in [0, 1] and applies mean/std itself; mirror_average (version 2,
                      optional, default false): each model's logits are the mean of its logits
                      on the crop and on the crop mirrored left-right (its CAM likewise, the
                      mirrored one mirrored back), and calibration applies to that mean
    face_crop        {margin, source}: square crop side = margin x the face box's longer side
                      (the margin the training crops were made at; source says where that is recorded)
    class_order      ["real", "fake"]: the order of the model's output logits
    decision_threshold  probability of "fake" at or above which a file is called fake
    temperature      logits are divided by it before the softmax (1.0: uncalibrated)
    uncertain_band   optional: scores within ±band of the threshold get verdict "uncertain"
    producer         {tool, tool_version, torch, timm, onnx, opset, ...}
    training         what the models were trained on and how well they did (free form)

The bundle's identity (`sha256` in reports) is the SHA-256 of manifest.json, which itself
pins every model file by its SHA-256; a model must be one file (no ONNX external data).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from forensic.errors import BundleError

MANIFEST_NAME = "manifest.json"
READABLE_SCHEMA_VERSIONS = (1, 2)
CLASS_ORDER = ("real", "fake")
# A face crop is resized to input.size² before the models: bounded so that a manifest cannot make
# every face cost gigabytes (a 2048² float crop is 50 MB; detectors here use 128-384).
MAX_INPUT_SIZE = 2048
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "exports" / "default"


def sha256_file(path: Path, check: Callable[[], None] | None = None) -> str:
    """The file's SHA-256; `check()`, if given, is called before each MiB is read (it may raise
    to abandon hashing a large video). Only a regular file is read: anything else raises
    OSError at once (opened without blocking, a FIFO would otherwise wait for a writer forever,
    and a device such as /dev/zero never end), even if it replaced a checked file since."""
    digest = hashlib.sha256()
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        handle = open(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            if check:
                check()
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: str
    sha256: str
    arch: str
    weight: float
    temperature: float = 1.0  # this member's own calibration (Platt scaling), see the module docstring
    bias: float = 0.0
    gradient_graph: str | None = None  # file of the white-box gradient graph, if exported
    gradient_graph_missing: str | None = None  # why there is none


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    sha256: str
    manifest: dict
    models: tuple[ModelEntry, ...]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def input_size(self) -> int:
        return int(self.manifest["input"]["size"])

    @property
    def margin(self) -> float:
        return float(self.manifest["face_crop"]["margin"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["decision_threshold"])

    @property
    def uncertain_band(self) -> float:
        return float(self.manifest.get("uncertain_band", 0.0))

    @property
    def mirror_average(self) -> bool:
        """Whether each model scores a crop as the mean of the crop and its mirror image."""
        return bool(self.manifest["input"].get("mirror_average", False))

    @property
    def temperature(self) -> float:
        """The bundle's temperature, applied after each member's own calibration (1.0: none)."""
        return float(self.manifest.get("temperature", 1.0))

    @property
    def fake_index(self) -> int:
        return list(self.manifest["class_order"]).index("fake")

    @property
    def files(self) -> tuple[Path, ...]:
        """The manifest and every file it names: never to be written over by an output."""
        names = [name for entry in self.models for name in (entry.file, entry.gradient_graph) if name]
        return (self.path / MANIFEST_NAME, *(self.path / name for name in names))


def _require(condition: bool, bundle_dir: Path, problem: str) -> None:
    if not condition:
        raise BundleError(f"{bundle_dir / MANIFEST_NAME}: {problem}")


def _check_manifest(manifest: dict, bundle_dir: Path) -> None:
    _require(isinstance(manifest, dict), bundle_dir, "not a JSON object")
    version = manifest.get("schema_version")
    _require(
        type(version) is int and version in READABLE_SCHEMA_VERSIONS,
        bundle_dir,
        f"schema_version {version!r} is not supported (this forensic reads "
        f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))})",
    )
    for key in ("name", "models", "input", "face_crop", "class_order", "decision_threshold"):
        _require(key in manifest, bundle_dir, f"missing key '{key}'")
    _require(isinstance(manifest["name"], str) and manifest["name"].strip() != "", bundle_dir,
             f"name {manifest['name']!r} must be a non-empty string")
    _require(
        isinstance(manifest["models"], list) and len(manifest["models"]) > 0,
        bundle_dir,
        "'models' must be a non-empty list",
    )
    names = []
    for entry in manifest["models"]:
        _require(isinstance(entry, dict), bundle_dir, "each model entry must be an object")
        for key in ("name", "file", "sha256"):
            _require(key in entry, bundle_dir, f"a model entry lacks '{key}'")
        name = entry["name"]
        _require(isinstance(name, str) and name != "", bundle_dir, f"model name {name!r} must be a non-empty string")
        names.append(name)
        _check_file_entry(entry, f"model {name!r}", bundle_dir)
        graph = entry.get("gradient_graph")
        _require(graph is None or isinstance(graph, dict), bundle_dir,
                 f"model {name!r}: gradient_graph must be an object")
        if graph and "file" in graph:
            _check_file_entry(graph, f"model {name!r}'s gradient graph", bundle_dir)
        # A zero or infinite weight would make every score NaN, and NaN >= threshold calls everything real.
        _require(_is_finite(entry.get("weight", 1.0)) and entry.get("weight", 1.0) > 0, bundle_dir,
                 f"model {name!r}: weight must be a finite number > 0")
        _require(_is_finite(entry.get("temperature", 1.0)) and entry.get("temperature", 1.0) > 0, bundle_dir,
                 f"model {name!r}: temperature must be a finite number > 0")
        _require(_is_finite(entry.get("bias", 0.0)), bundle_dir, f"model {name!r}: bias must be a finite number")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    _require(not duplicates, bundle_dir, f"model names must be unique ({', '.join(map(repr, duplicates))} repeated)")
    _require(
        isinstance(manifest["class_order"], list) and sorted(map(str, manifest["class_order"])) == sorted(CLASS_ORDER),
        bundle_dir,
        f"class_order must hold exactly {list(CLASS_ORDER)}",
    )
    spec = manifest["input"]
    _require(isinstance(spec, dict), bundle_dir, "'input' must be an object")
    for key in ("size", "mean", "std", "normalize_in_graph"):
        _require(key in spec, bundle_dir, f"'input' lacks '{key}'")
    _require(isinstance(spec["size"], int) and not isinstance(spec["size"], bool) and 0 < spec["size"] <= MAX_INPUT_SIZE,
             bundle_dir, f"input.size must be an integer in 1..{MAX_INPUT_SIZE}")
    for key in ("mean", "std"):
        _require(isinstance(spec[key], list) and len(spec[key]) == 3 and all(map(_is_finite, spec[key])), bundle_dir,
                 f"input.{key} must be three finite numbers (R, G, B)")
    _require(all(value > 0 for value in spec["std"]), bundle_dir, "input.std must be > 0")
    _require(isinstance(spec["normalize_in_graph"], bool), bundle_dir, "input.normalize_in_graph must be true or false")
    mirror = spec.get("mirror_average", False)
    _require(isinstance(mirror, bool), bundle_dir, "input.mirror_average must be true or false")
    _require(not mirror or version >= 2, bundle_dir, "input.mirror_average needs schema_version 2")
    _require(spec.get("color_order", "RGB") == "RGB", bundle_dir, "only RGB input is supported")
    _require(spec.get("layout", "NCHW") == "NCHW", bundle_dir, "only NCHW input is supported")
    crop = manifest["face_crop"]
    _require(isinstance(crop, dict) and _is_finite(crop.get("margin")) and crop["margin"] > 0, bundle_dir,
             "face_crop.margin must be a finite number > 0")
    threshold = manifest["decision_threshold"]
    _require(_is_number(threshold) and 0.0 <= threshold <= 1.0, bundle_dir,
             "decision_threshold must be a number in [0, 1]")
    band = manifest.get("uncertain_band", 0.0)
    _require(_is_number(band) and 0.0 <= band < 0.5, bundle_dir, "uncertain_band must be a number in [0, 0.5)")
    temperature = manifest.get("temperature", 1.0)
    _require(_is_finite(temperature) and temperature > 0, bundle_dir, "temperature must be a finite number > 0")


def _check_file_entry(entry: dict, what: str, bundle_dir: Path) -> None:
    """A file the manifest names: a plain name inside the bundle folder, and its SHA-256."""
    file = entry.get("file")
    _require(_is_plain_file_name(file), bundle_dir, f"{what}: file {file!r} must be a plain file name inside the bundle")
    digest = entry.get("sha256")
    _require(isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) is not None, bundle_dir,
             f"{what}: sha256 must be 64 lowercase hex digits")


def _is_plain_file_name(name) -> bool:
    """A file directly inside the bundle folder: no path, no parent, nothing absolute."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    # Compared, not converted: float() of an integer past 1.8e308 (JSON allows any) raises OverflowError.
    return _is_number(value) and -sys.float_info.max <= value <= sys.float_info.max


def _verify_file(path: Path, expected: str) -> None:
    try:
        if not path.is_file():  # never opened: a FIFO would block, a device never end
            raise BundleError(f"{path}: file named in the manifest is "
                              f"{'not a regular file' if path.exists() else 'missing'}")
        actual = sha256_file(path)
    except OSError as exc:  # a name over the system's length limit too
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    if actual != expected:
        raise BundleError(
            f"{path}: SHA-256 {actual[:12]}… does not match the manifest's "
            f"{expected[:12]}…; the bundle was modified or is corrupt"
        )


def _graph_tensors(graph):
    """Every tensor stored in an ONNX graph or function: initializers and node attributes,
    subgraphs included."""
    yield from getattr(graph, "initializer", ())
    for sparse in getattr(graph, "sparse_initializer", ()):
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _refuse_external_data(path: Path) -> None:
    """The manifest pins a model by its file's SHA-256; weights kept in a separate external-data
    file would be loaded by ONNX Runtime without that check, so such a model is refused."""
    import onnx  # only parsed here; an unparseable file is reported by ONNX Runtime when it loads
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return
    for graph in [model.graph, *model.functions]:
        for tensor in _graph_tensors(graph):
            if uses_external_data(tensor):
                location = next((item.value for item in tensor.external_data if item.key == "location"), "?")
                raise BundleError(
                    f"{path}: keeps tensor {tensor.name or '(unnamed)'!r} in an external data file "
                    f"({location}) that the manifest's SHA-256 does not cover; re-export the model as one file"
                )


def load_bundle(bundle_dir: Path) -> Bundle:
    """Read and verify a bundle: the manifest's shape, every model file's SHA-256, and that no
    model keeps weights in an external-data file that SHA-256 would not cover."""
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / MANIFEST_NAME
    try:
        if manifest_path.exists() and not manifest_path.is_file():  # a FIFO, a device: never opened
            raise BundleError(f"{manifest_path}: not a regular file")
        if not manifest_path.is_file():
            raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST_NAME})")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError(f"{manifest_path}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, an integer over 4,300 digits, nested too deep
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    _check_manifest(manifest, bundle_dir)
    models = []
    for entry in manifest["models"]:
        _verify_file(bundle_dir / entry["file"], entry["sha256"])
        _refuse_external_data(bundle_dir / entry["file"])
        graph = entry.get("gradient_graph") or {}
        if graph.get("file"):
            _verify_file(bundle_dir / graph["file"], graph.get("sha256", ""))
            _refuse_external_data(bundle_dir / graph["file"])
        models.append(
            ModelEntry(
                name=entry["name"],
                file=entry["file"],
                sha256=entry["sha256"],
                arch=entry.get("arch", entry["name"]),
                weight=float(entry.get("weight", 1.0)),
                temperature=float(entry.get("temperature", 1.0)),
                bias=float(entry.get("bias", 0.0)),
                gradient_graph=graph.get("file"),
                gradient_graph_missing=graph.get("unavailable") if not graph.get("file") else None,
            )
        )
    return Bundle(
        path=bundle_dir,
        sha256=sha256_file(manifest_path),
        manifest=manifest,
        models=tuple(models),
    )


def _bundle_files(bundle_dir: Path) -> set[str]:
    """The model and gradient-graph files a folder's manifest names (none if it has no readable one)."""
    try:
        manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        names = set()
        for entry in manifest["models"]:
            names.add(entry["file"])
            if (entry.get("gradient_graph") or {}).get("file"):
                names.add(entry["gradient_graph"]["file"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    # Only plain names inside the folder: a manifest must not make us delete anything else.
    return {name for name in names if _is_plain_file_name(name)}


def check_bundle_destination(out_dir: Path, force: bool = False) -> None:
    """Whether a bundle may be written to `out_dir` (BundleError, one line, if not): a folder that
    is empty, or may be replaced (`force`), or can be made. Callers with minutes of work before
    `write_bundle` call it first, so that a bad destination fails before the work, not after."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise BundleError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    ancestor = next(parent for parent in out_dir.absolute().parents if parent.exists())
    if not ancestor.is_dir():
        raise BundleError(f"{out_dir}: cannot be made, {ancestor} is not a folder")


def write_bundle(out_dir: Path, manifest: dict, model_files: dict[str, Path], force: bool = False) -> Bundle:
    """Write a bundle: copy the model files, fill in their SHA-256 and write manifest.json.

    `manifest["models"]` entries name their file; `model_files` maps each file name to where
    it lies now. The bundle is assembled in a temporary folder and moved into place, so a
    failed export never leaves half a bundle. An existing bundle is replaced only with `force`,
    and then only its manifest and model files: the old manifest's model files that the new
    one does not name are removed, other files there (a model card) stay.
    """
    out_dir = Path(out_dir)
    check_bundle_destination(out_dir, force)
    manifest = json.loads(json.dumps(manifest))  # a deep copy that is surely JSON
    # The lowest version that describes the bundle, so that an older forensic reads what it can score right.
    manifest["schema_version"] = 2 if manifest.get("input", {}).get("mirror_average") else 1
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        for entry in manifest["models"]:
            target = staging / entry["file"]
            shutil.copyfile(model_files[entry["file"]], target)
            _refuse_external_data(target)
            entry["sha256"] = sha256_file(target)
            graph = entry.get("gradient_graph") or {}
            if graph.get("file"):
                shutil.copyfile(model_files[graph["file"]], staging / graph["file"])
                _refuse_external_data(staging / graph["file"])
                graph["sha256"] = sha256_file(staging / graph["file"])
        _check_manifest(manifest, staging)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            # Replace the bundle's own files, manifest last; leave anything else (a model card).
            for entry in manifest["models"]:
                os.replace(staging / entry["file"], out_dir / entry["file"])
                graph = entry.get("gradient_graph") or {}
                if graph.get("file"):
                    os.replace(staging / graph["file"], out_dir / graph["file"])
            previous = _bundle_files(out_dir)
            os.replace(staging / MANIFEST_NAME, out_dir / MANIFEST_NAME)
            for stale in previous - _bundle_files(out_dir):
                (out_dir / stale).unlink(missing_ok=True)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return load_bundle(out_dir)
