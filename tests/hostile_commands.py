"""The hostile corpus's command kinds (issue 14): options, bundles and output paths a careless
or hostile user can give `forensic scan`. Each makes what it needs in a work folder beside one
good input (`scan IMAGE ARGS...`) and says the exit status and the one error line it expects;
tests/test_hostile_corpus.py runs them. See tests/hostile_corpus.py for the file kinds."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from forensic.bundle import DEFAULT_BUNDLE, MANIFEST_NAME, sha256_file


@dataclass(frozen=True)
class Command:
    args: list[str]  # after `forensic scan IMAGE`
    names: str  # what the error line must name: the option, the bundle or the output
    after: Callable[[], None] | None = None  # checks once it ran (kinds that are not refused)
    image: bool = True  # whether IMAGE is given


@dataclass(frozen=True)
class CommandKind:
    name: str
    group: str  # option, bundle, output
    make: Callable[[Path, Path], Command]  # (work folder, the good image) -> the command
    exit: int
    message: str  # the error line holds it
    needs: str | None = None  # "modes": a process held to file modes (not root)
    isolate: bool = False  # run in its own process under a memory limit: a regression could fill memory


COMMAND_KINDS: list[CommandKind] = []


def command(name: str, group: str, exit: int, message: str, needs: str | None = None, isolate: bool = False):
    def register(make):
        COMMAND_KINDS.append(CommandKind(name, group, make, exit, message, needs, isolate))
        return make
    return register


def option(name: str, args: list[str], names: str, message: str, **kwargs) -> None:
    command(name, "option", 2, message, **kwargs)(lambda w, image: Command(args, names))


# --- options: out of range, non-finite, unknown, empty (an unset shell variable) ------------------
option("frames-zero", ["--frames", "0"], "--frames", "greater than or equal to 1")
option("frames-not-a-number", ["--frames", "lots"], "--frames", "valid integer")
option("fps-zero", ["--fps", "0"], "--fps", "greater than or equal to 0.001")
option("fps-infinite", ["--fps", "inf"], "--fps", "must be a finite number")  # passed, then failed per video
option("fps-nan", ["--fps", "nan"], "--fps", "Invalid value")
option("threshold-above-one", ["--threshold", "1.5"], "--threshold", "less than or equal to 1")
option("threshold-nan", ["--threshold", "nan"], "--threshold", "Invalid value")
option("uncertain-band-half", ["--uncertain-band", "0.5"], "--uncertain-band", "less than or equal to 0.499")
option("min-face-below-mtcnn", ["--min-face", "5"], "--min-face", "greater than or equal to 12")
option("aggregate-unknown", ["--aggregate", "median"], "--aggregate", "confident, mean or max")
option("device-unknown", ["--device", "tpu"], "--device", "auto, cpu or cuda")
option("shard-out-of-range", ["--shard", "2/2"], "--shard", "0 <= I < N")
option("shard-not-a-fraction", ["--shard", "a/b"], "--shard", "must be I/N")
option("self-test-eps-overflow", ["--self-test", "--self-test-eps", "1e309"], "--self-test-eps", "cannot read")
option("self-test-eps-zero", ["--self-test", "--self-test-eps", "0"], "--self-test-eps", "in (0, 1]")
option("self-test-steps-zero", ["--self-test-steps", "0"], "--self-test-steps", "greater than or equal to 1")
option("workers-zero", ["--workers", "0"], "--workers", "greater than or equal to 1")
option("unknown-option", ["--frobnicate"], "--frobnicate", "No such option")
option("option-without-its-value", ["--json"], "--json", "requires an argument")
for _option in ("--json", "--csv", "--html", "--heatmaps", "--bundle", "--from"):
    option(f"empty{_option}", [_option, ""], _option, "an empty string is not a path")
command("empty-path-argument", "option", 2, "an empty string is not a path")(
    lambda w, image: Command([""], "paths", image=False))  # Path('') was the current folder, scanned
command("from-missing-file", "option", 2, "cannot read the path list")(
    lambda w, image: Command(["--from", str(w / "absent.txt")], str(w / "absent.txt")))
command("from-a-folder", "option", 2, "cannot read the path list")(lambda w, image: Command(["--from", str(w)], str(w)))
command("from-holding-a-nul-byte", "option", 2, "NUL byte")(
    lambda w, image: Command(["--from", str(_written(w / "list.txt", f"{image}\n/tmp/a\0b.jpg\n".encode()))], "list.txt"))
# /dev/zero was read whole into memory before the NUL check.
command("from-dev-zero", "option", 2, "NUL byte", isolate=True)(lambda w, image: Command(["--from", "/dev/zero"], "/dev/zero"))


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- bundles: missing, malformed, tampered, or disagreeing with their models ----------------------
def _bundle(work: Path, change: Callable[[dict], None] | None = None, copy: tuple[str, ...] = ()) -> Path:
    """The default bundle with its manifest changed: model files linked, or copied where the kind
    alters them (`copy`)."""
    bundle = work / "bundle"
    bundle.mkdir()
    manifest = json.loads((DEFAULT_BUNDLE / MANIFEST_NAME).read_text())
    for entry in manifest["models"]:
        for name in (entry["file"], (entry.get("gradient_graph") or {}).get("file")):
            if name:
                (shutil.copyfile if name in copy else os.symlink)(DEFAULT_BUNDLE / name, bundle / name)
    if change:
        change(manifest)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    return bundle


def bundle_kind(name: str, message: str, change: Callable[[dict], None] | None = None, copy: tuple[str, ...] = (),
                then: Callable[[Path], None] | None = None, isolate: bool = False) -> None:
    def make(work: Path, image: Path) -> Command:
        bundle = _bundle(work, change, copy)
        if then:
            then(bundle)
        return Command(["--bundle", str(bundle)], str(bundle))
    command(name, "bundle", 2, message, isolate=isolate)(make)


def _model(manifest: dict) -> dict:
    return manifest["models"][0]


# The default bundle's first model and its gradient graph, whatever the bundle names them.
_FIRST_MODEL = _model(json.loads((DEFAULT_BUNDLE / MANIFEST_NAME).read_text()))
MODEL_FILE, GRADIENT_FILE = _FIRST_MODEL["file"], _FIRST_MODEL["gradient_graph"]["file"]


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


command("bundle-missing", "bundle", 2, "not a bundle")(lambda w, image: Command(["--bundle", str(w / "none")], str(w / "none")))
command("bundle-is-a-file", "bundle", 2, "not a bundle")(lambda w, image: Command(["--bundle", str(image)], str(image)))
command("bundle-empty-folder", "bundle", 2, "not a bundle")(lambda w, image: Command(["--bundle", str(w)], str(w)))
bundle_kind("manifest-not-json", "not valid JSON", then=lambda b: (b / MANIFEST_NAME).write_text("{'models': ["))
bundle_kind("manifest-not-utf8", "not valid JSON", then=lambda b: (b / MANIFEST_NAME).write_bytes(b'{"name": "\xff"}'))
bundle_kind("manifest-a-list", "not a JSON object", then=lambda b: (b / MANIFEST_NAME).write_text("[1, 2]"))
# A FIFO would block the scan, /dev/zero fill its memory: in a process of their own, should the check go.
bundle_kind("manifest-a-fifo", "not a regular file", then=lambda b: _replace(b / MANIFEST_NAME, os.mkfifo), isolate=True)
bundle_kind("manifest-linked-to-dev-zero", "not a regular file", isolate=True,
            then=lambda b: _replace(b / MANIFEST_NAME, lambda p: p.symlink_to("/dev/zero")))
bundle_kind("schema-version-3", "schema_version 3 is not supported", lambda m: m.update(schema_version=3))
bundle_kind("without-models", "missing key 'models'", lambda m: m.pop("models"))
bundle_kind("name-a-number", "must be a non-empty string", lambda m: m.update(name=7))  # finding 5
bundle_kind("name-null", "must be a non-empty string", lambda m: m.update(name=None))
bundle_kind("name-empty", "must be a non-empty string", lambda m: m.update(name=""))
bundle_kind("model-file-missing", "is missing", then=lambda b: (b / MODEL_FILE).unlink())
bundle_kind("model-file-a-fifo", "not a regular file", then=lambda b: _replace(b / MODEL_FILE, os.mkfifo), isolate=True)
bundle_kind("model-file-tampered", "does not match the manifest", copy=(MODEL_FILE,),
            then=lambda b: _flip_a_byte(b / MODEL_FILE))
bundle_kind("gradient-graph-tampered", "does not match the manifest", copy=(GRADIENT_FILE,),
            then=lambda b: _flip_a_byte(b / GRADIENT_FILE))
bundle_kind("model-path-traversal", "must be a plain file name", lambda m: _model(m).update(file="../model.onnx"))
bundle_kind("model-path-absolute", "must be a plain file name", lambda m: _model(m).update(file="/etc/passwd"))
bundle_kind("model-weight-nan", "weight must be a finite number", lambda m: _model(m).update(weight=float("nan")))
bundle_kind("threshold-out-of-range", "decision_threshold must be a number in [0, 1]",
            lambda m: m.update(decision_threshold=1.5))
bundle_kind("threshold-a-string", "decision_threshold must be a number in [0, 1]",
            lambda m: m.update(decision_threshold="0.5"))
bundle_kind("input-size-huge", "input.size must be an integer", lambda m: m["input"].update(size=10 ** 30))
bundle_kind("class-order-wrong", "class_order must hold", lambda m: m.update(class_order=["real", "real"]))
bundle_kind("duplicate-model-names", "must be unique", lambda m: m["models"].append(dict(_model(m))))
# Found by fuzz/run.py (the first three) or in writing it: tracebacks (OverflowError, OSError,
# RecursionError, ValueError), not the one-line refusal.
bundle_kind("weight-a-400-digit-integer", "weight must be a finite number", lambda m: _model(m).update(weight=10 ** 400))
bundle_kind("mean-a-400-digit-integer", "input.mean must be three finite",
            lambda m: m["input"].update(mean=[0.5, 10 ** 400, 0.5]))
bundle_kind("model-file-name-too-long", "File name too long", lambda m: _model(m).update(file="m" * 300))
bundle_kind("manifest-nested-too-deep", "not valid JSON (maximum recursion depth",
            then=lambda b: (b / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000))
bundle_kind("manifest-a-5000-digit-integer", "not valid JSON (Exceeds the limit",
            then=lambda b: (b / MANIFEST_NAME).write_text('{"schema_version": 1, "name": ' + "9" * 5000 + "}"))
command("bundle-path-too-long", "bundle", 2, "File name too long")(
    lambda w, image: Command(["--bundle", str(w / ("b" * 300))], "b" * 300))
# Finding 7: these made every file an error (exit 1) instead of refusing the bundle at load.
bundle_kind("input-size-disagrees-with-the-model", "input.size 64", lambda m: m["input"].update(size=64))
bundle_kind("model-not-onnx", "ONNX Runtime cannot load it", copy=(MODEL_FILE,),
            then=lambda b: _repinned(b, lambda p: p.write_bytes(b"not an ONNX model" * 64)))
bundle_kind("model-with-three-logits", "logits of shape (1, 3)", then=lambda b: _repinned(b, _three_logit_model))
bundle_kind("model-with-external-data", "external data file", then=lambda b: _repinned(b, _external_data_model))


def _repinned(bundle: Path, make: Callable[[Path], None]) -> None:
    """Replace the first model with what `make` writes and pin it in the manifest by its SHA-256,
    as a bundle's author would: the hash check passes, so what follows it must refuse it."""
    path = bundle / MODEL_FILE
    path.unlink()
    make(path)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    _model(manifest)["sha256"] = sha256_file(path)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


def _three_logit_model(path: Path) -> None:
    """A valid ONNX graph taking the manifest's (N, 3, size, size) crops and giving 3 logits."""
    import onnx
    from onnx import TensorProto, helper

    size = json.loads((path.parent / MANIFEST_NAME).read_text())["input"]["size"]

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["logits"])],
        "three", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _external_data_model(path: Path) -> None:
    """A graph whose weight lives in a side file the manifest's SHA-256 does not cover."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    weight.external_data.add(key="location", value="weights.bin")
    (path.parent / "weights.bin").write_bytes(b"\0\0\x80\x3f")
    graph = helper.make_graph([helper.make_node("Mul", ["pixels", "w"], ["logits"])], "external",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


# --- output paths: never an input, a bundle file, a device, or another output's file --------------
def output(name: str, message: str, exit: int = 2, needs: str | None = None):
    return command(name, "output", exit, message, needs=needs)


def _linked(work: Path, image: Path, make_link: Callable[[Path, Path], None], option: str = "--json") -> Command:
    link = work / "out.json"
    make_link(image, link)
    return Command([option, str(link)], str(link))


output("json-hard-linked-to-the-input", "is one of the inputs")(lambda w, image: _linked(w, image, os.link))  # finding 1
output("csv-symlink-to-the-input", "is one of the inputs")(
    lambda w, image: _linked(w, image, lambda target, link: link.symlink_to(target), "--csv"))
output("json-the-input-by-another-path", "is one of the inputs")(
    lambda w, image: Command(["--json", f"{image.parent}/../{image.parent.name}/{image.name}"], image.name))
output("csv-a-file-found-in-a-folder-input", "is one of the inputs")(lambda w, image: _found_in_folder(w, image))
output("json-a-folder", "is a folder")(lambda w, image: Command(["--json", str(w)], str(w)))
output("json-under-a-regular-file", "cannot make the folder")(
    lambda w, image: Command(["--json", str(image / "report.json")], str(image)))
output("json-name-too-long", "File name too long")(
    lambda w, image: Command(["--json", str(w / ("r" * 300 + ".json"))], "r" * 300))
output("json-and-csv-one-file", "is also the destination of another output")(
    lambda w, image: Command(["--json", str(w / "r.out"), "--csv", str(w / "r.out")], str(w / "r.out")))
output("html-index-is-the-json", "is also the destination of another output")(
    lambda w, image: Command(["--json", str(w / "index.html"), "--html", str(w)], str(w / "index.html")))
output("json-over-the-bundle-manifest", "is one of the bundle's files")(lambda w, image: _over_manifest(w))
output("json-a-fifo", "is not a regular file")(lambda w, image: _linked(w, w / "pipe", lambda target, link: os.mkfifo(link)))
output("json-linked-to-dev-null", "is not a regular file")(  # replacing /dev/null itself, as root
    lambda w, image: _linked(w, Path("/dev/null"), lambda target, link: link.symlink_to(target)))
output("json-symlink-loop", "cannot be resolved")(
    lambda w, image: _linked(w, w / "out.json", lambda target, link: link.symlink_to(target)))
output("json-in-a-read-only-folder", "cannot write in the folder", needs="modes")(
    lambda w, image: Command(["--json", str(_read_only(w / "locked") / "r.json")], "locked"))
output("heatmaps-a-regular-file", "cannot make the heatmap folder")(
    lambda w, image: Command(["--heatmaps", str(image)], str(image)))
output("json-a-dangling-symlink", "", exit=0)(lambda w, image: _dangling_output(w))
output("json-hard-linked-to-a-bystander", "", exit=0)(lambda w, image: _bystander_output(w))


def _found_in_folder(work: Path, image: Path) -> Command:
    folder = work / "inbox"
    folder.mkdir()
    shutil.copyfile(image, folder / "found.jpg")
    return Command([str(folder), "--csv", str(folder / "found.jpg")], str(folder / "found.jpg"))


def _over_manifest(work: Path) -> Command:
    """A copy of the default bundle, so that a regression overwrites the copy's manifest."""
    bundle = _bundle(work)
    return Command(["--bundle", str(bundle), "--json", str(bundle / MANIFEST_NAME)], str(bundle / MANIFEST_NAME))


def _read_only(folder: Path) -> Path:
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _dangling_output(work: Path) -> Command:
    """A link to a path that does not exist: the link is replaced by the report, and nothing is
    created where it pointed."""
    target = work / "elsewhere" / "planted.json"
    (work / "out.json").symlink_to(target)

    def after() -> None:
        assert not (work / "out.json").is_symlink() and json.loads((work / "out.json").read_text())["files"]
        assert not target.parent.exists()
    return Command(["--json", str(work / "out.json")], "out.json", after)


def _bystander_output(work: Path) -> Command:
    """An output name hard-linked to some other file of the user's: replaced, never written into."""
    bystander = _written(work / "bystander.txt", b"someone else's bytes")
    os.link(bystander, work / "out.json")

    def after() -> None:
        assert bystander.read_bytes() == b"someone else's bytes"
        assert json.loads((work / "out.json").read_text())["files"]
    return Command(["--json", str(work / "out.json")], "out.json", after)
