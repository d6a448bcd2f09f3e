"""The fuzzing harness (fuzz/harness.py, fuzz/run.py; issue 14): a short seeded run per target,
the property's own checks, and hostile manifests the fuzzer may take long to reach, as explicit
examples. The long run is `python fuzz/run.py --minutes 10` (README, SECURITY.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import forensic.media as media
from forensic.errors import MediaError

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
_spec = importlib.util.spec_from_file_location("fuzz_harness", FUZZ / "harness.py")
harness = sys.modules.setdefault("fuzz_harness", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(harness)


# Examples per target: about 25 s in all on a busy 2-core machine. libFuzzer's seed and a fixed
# hash seed make the run the same every time.
@pytest.mark.parametrize("target, runs", [("image", 8000), ("video", 1500), ("manifest", 500)])
def test_a_short_seeded_fuzz_run_breaks_no_property(target, runs, tmp_path):
    out = tmp_path / "findings"
    result = subprocess.run([sys.executable, str(FUZZ / "run.py"), "--target", target, "--runs", str(runs), "--seed", "1",
                             "--out", str(out)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    findings = "\n\n".join(path.read_text() for path in out.glob("*/finding.txt")) if out.exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + findings
    assert f"{target}: {runs} examples, 0 findings" in result.stdout, result.stdout


def test_the_harness_makes_a_valid_seed_of_every_media_type(tmp_path):
    images, videos = harness.image_seeds(), harness.video_seeds()
    assert {harness.image_case(data)[0] for data in images.values()} == set(harness.IMAGE_SUFFIXES)
    valid = [name for name in images if not name.startswith(("random", "empty"))]
    for name in valid:
        harness.check_image(images[name], tmp_path)  # raises Finding if the property breaks
        suffix, content = harness.image_case(images[name])
        path = tmp_path / f"seed{suffix}"
        path.write_bytes(content)
        assert media.load_image(path).ndim == 3, name  # valid seeds decode
    for name, data in videos.items():
        suffix, mode, content = harness.video_case(data)
        path = tmp_path / f"seed{suffix}"
        path.write_bytes(content)
        if not name.startswith(("random", "empty")):
            assert len(list(media.sample_video_frames(path, **mode))) >= 2, name


# The property's checks, each shown to fire: a harness that cannot fail proves nothing.
def _misbehaving(kind: str, tmp_path: Path):
    def load_image(path):
        if kind == "other exception":
            raise KeyError("tag")
        if kind == "message without the file":
            raise MediaError("cannot decode")
        if kind == "two-line message":
            raise MediaError(f"{path}: cannot decode\nTraceback")
        if kind == "write outside":
            (tmp_path / "outside.txt").write_text("x")
        if kind == "input modified":
            Path(path).write_bytes(b"changed")
        if kind == "process":
            subprocess.run(["true"])
        return media.load_image(path)
    return load_image


@pytest.mark.parametrize("kind, problem", [
    ("other exception", "KeyError escaped"),
    ("message without the file", "message does not name"),
    ("two-line message", "not one line"),
    ("write outside", "wrote outside its temporary folder"),
    ("input modified", "modified its input"),
    ("process", "started a process"),
])
def test_the_property_catches_each_kind_of_failure(kind, problem, tmp_path, monkeypatch):
    monkeypatch.setattr(media, "load_image", _misbehaving(kind, tmp_path))
    workdir = tmp_path / "work"
    workdir.mkdir()
    seed = harness.image_seeds()["astronaut.png"]
    with pytest.raises(harness.Finding, match=problem):
        harness.check_image(seed, workdir)
    assert not (tmp_path / "outside.txt").exists()  # the guard refused the write


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return harness.make_bundle_sandbox(tmp_path_factory.mktemp("fuzz-bundle"))


def _with(sandbox, change) -> bytes:
    manifest = json.loads(json.dumps(sandbox.base))
    change(manifest)
    return json.dumps(manifest, allow_nan=True).encode()


def _model(**values):
    return lambda manifest: manifest["models"][0].update(values)


def _graph(**values):
    return lambda manifest: manifest["models"][0]["gradient_graph"].update(values)


# Manifests the fuzzer may take long to reach. Each must load, or be refused with a BundleError
# naming the bundle; a name that reaches outside the bundle is refused before any file is opened
# (a FIFO or /dev/zero would hang the read).
HOSTILE_MANIFESTS = {
    "traversal": _model(file="../../etc/passwd"), "absolute": _model(file="/etc/passwd"),
    "backslash": _model(file="..\\model.onnx"), "fifo": _model(file="fifo.onnx"), "dev-zero": _model(file="zero.onnx"),
    "symlink-loop": _model(file="loop.onnx"), "folder": _model(file="dir.onnx"), "dangling": _model(file="dangling.onnx"),
    "symlink-to-passwd": _model(file="passwd.onnx"), "nul": _model(file="model.onnx\x00.txt"),
    "bidi": _model(file="\u202exnno.onnx"), "symlink-out": _graph(file="up.onnx"), "symlink-in": _graph(file="card.onnx"),
    "nan-weight": _model(weight=float("nan")), "inf-temperature": _model(temperature=float("inf")),
    "inf-bias": _model(bias=-float("inf")), "bool-weight": _model(weight=True), "subnormal-weight": _model(weight=5e-324),
    "nan-threshold": lambda m: m.update(decision_threshold=float("nan")), "band": lambda m: m.update(uncertain_band=0.5),
    "huge-size": lambda m: m["input"].update(size=10 ** 30), "float-size": lambda m: m["input"].update(size=1.5),
    "zero-std": lambda m: m["input"].update(std=[0.5, 0.0, 0.5]),
    "classes": lambda m: m.update(class_order=["real", "real"]),
    "unicode-name": lambda m: m.update(name="\u540d\u524d\n\x1b[31m"),
    "duplicate-model": lambda m: m["models"].append(dict(m["models"][0])), "no-models": lambda m: m.update(models=[]),
    "no-input": lambda m: m.pop("input"), "float-version": lambda m: m.update(schema_version=1.0),
    "bool-version": lambda m: m.update(schema_version=True),
}


@pytest.mark.parametrize("change", HOSTILE_MANIFESTS.values(), ids=HOSTILE_MANIFESTS.keys())
def test_hostile_manifests_load_or_are_refused_naming_the_bundle(sandbox, change):
    harness.check_manifest_text(_with(sandbox, change), sandbox)


def test_a_name_that_leaves_the_bundle_is_refused_before_any_file_is_opened(sandbox):
    from forensic.bundle import load_bundle
    from forensic.errors import BundleError

    for name in ("../outside/model.onnx", "/etc/passwd", str(sandbox.workdir / "outside" / "model.onnx")):
        (sandbox.folder / "manifest.json").write_bytes(_with(sandbox, _model(file=name)))
        with pytest.raises(BundleError, match="must be a plain file name inside the bundle"):
            load_bundle(sandbox.folder)
