"""Fuzz targets for forensic's hostile-input boundary (issue 14): image loading, video frame
sampling and bundle manifests. Each target takes one fuzzer input (bytes) and checks the
property every input must keep:

- it gives a valid result (an RGB uint8 image; at least one RGB frame, in order; a verified
  Bundle whose values are in range), or raises the module's one-line error (MediaError for
  media, BundleError for bundles) whose message names the file;
- no other exception escapes, and (with the fuzzer's per-example timeout) nothing hangs;
- nothing is written, removed or renamed outside the harness's own temporary folder, and no
  process or network connection is started (a Python audit hook refuses and records it);
- the input files are not modified (content hash and stat before and after).

A broken property raises Finding, with a signature that stays the same for the same bug.

Input layout (so that the fuzzer mutates the file type too):
- image: byte 0 picks the suffix (IMAGE_SUFFIXES[b % 7]), the rest is the file;
- video: byte 0 picks the suffix (VIDEO_SUFFIXES[b % 6]) and the sampling ((b // 6) % 3:
  4 frames by seeking, 4 frames decoded in order, or 4 frames per second); the rest is the file;
- manifest: byte 0 even, the rest is manifest.json as is; odd, the rest drives up to four
  mutations (delete, wrong type, huge or non-finite number, odd unicode, path traversal,
  absolute path, symlink, FIFO or device name, another file's SHA-256...) of the default
  bundle's manifest, written into a copy of the bundle with those links beside the models.

The pixel limit is lowered to FUZZ_MAX_PIXELS while a target runs, so that a header declaring
a large image takes the same refusal path without each example allocating up to 750 MB.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import shutil
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

import forensic.media as media
from forensic.bundle import DEFAULT_BUNDLE, MANIFEST_NAME, Bundle, load_bundle
from forensic.errors import BundleError, MediaError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
VIDEO_MODES = ({"count": 4, "seek": True}, {"count": 4, "seek": False}, {"count": None, "fps": 4.0})
FUZZ_MAX_PIXELS = 1 << 22
TARGETS = ("image", "video", "manifest")


class Finding(AssertionError):
    """A broken property: `signature` names the bug (the same for the same bug, whatever the input)."""

    def __init__(self, target: str, problem: str, detail: str = "", where: str = ""):
        self.target, self.problem, self.where = target, problem, where
        self.signature = f"{target}: {problem}" + (f" at {where}" if where else "")
        super().__init__(self.signature + (f"\n{detail}" if detail else ""))


# ---------------------------------------------------------------------------------------------
# The write guard: a Python audit hook, active only inside `_WriteGuard.only_under(root)`.

_WRITES = {  # audit event -> the positions of its arguments that are written or removed
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.symlink": (1,),
    "os.link": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
    "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,),
    "shutil.copytree": (1,), "shutil.move": (0, 1), "shutil.chown": (0,), "tempfile.mkstemp": (0,),
    "tempfile.mkdtemp": (0,),
}
_FORBIDDEN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
              "socket.connect", "socket.bind", "socket.sendto", "urllib.Request", "webbrowser.open")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _WriteGuard:
    def __init__(self):
        self.root: str | None = None
        self.violations: list[str] = []
        self.installed = False

    def _outside(self, path) -> bool:
        if path is None or isinstance(path, int):
            return False  # a file descriptor: what it names was opened (and checked) before
        try:
            resolved = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return True
        return os.path.commonpath([resolved, self.root]) != self.root

    def __call__(self, event: str, args: tuple) -> None:
        if self.root is None:
            return
        problem = None
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and self._outside(path):
                problem = f"open({path!r}, {mode!r}) for writing"
        elif event in _WRITES:
            outside = [args[i] for i in _WRITES[event] if i < len(args) and self._outside(args[i])]
            if outside:
                problem = f"{event}{tuple(args)!r}"
        elif event.startswith(_FORBIDDEN):
            problem = f"{event}: a process or network connection was started"
        if problem:
            self.violations.append(problem)
            raise PermissionError(f"fuzz harness: refused {problem}")

    @contextlib.contextmanager
    def only_under(self, root: Path) -> Iterator[list[str]]:
        if not self.installed:
            sys.addaudithook(self)
            self.installed = True
        self.root, self.violations = os.path.realpath(root), []
        try:
            yield self.violations
        finally:
            self.root = None


GUARD = _WriteGuard()


@contextlib.contextmanager
def _fuzz_limits() -> Iterator[None]:
    """The pixel limit lowered to FUZZ_MAX_PIXELS (the same refusal, without the memory)."""
    saved = media.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS
    media.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS = FUZZ_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        media.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS = saved


def _fingerprint(path: Path, content: bool = True) -> tuple:
    """What must not change: the entry's type, size, times and inode, and (with `content`) a
    regular file's bytes."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return ("missing", exc.errno)
    digest = None
    if content and os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, digest)


def _innermost(exc: BaseException) -> str:
    """Where an exception was raised: its innermost frame (file name and function)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.name}"


def _run(target: str, call: Callable[[], None], expected: type[BaseException], names: Path, inputs: list[Path],
         workdir: Path, allow_newlines_from: tuple[str, ...] = (), watched: tuple[Path, ...] = ()) -> None:
    """Run `call` under the guard and check the property (see the module docstring): `inputs`
    are hashed before and after, `watched` (large files) compared by stat."""
    def state() -> dict:
        return {**{path: _fingerprint(path) for path in inputs}, **{path: _fingerprint(path, False) for path in watched}}

    before = state()
    problems: list[Finding] = []
    with GUARD.only_under(workdir) as violations:
        try:
            with _fuzz_limits():
                call()
        except Finding as finding:  # the result is not valid
            problems.append(finding)
        except KeyboardInterrupt:
            raise
        except expected as exc:
            message = str(exc)
            if str(names) not in message:
                problems.append(Finding(target, f"{type(exc).__name__} message does not name {names.name}", message))
            rest = message
            for text in allow_newlines_from:
                rest = rest.replace(text, "")
            if "\n" in rest or "\r" in rest:
                problems.append(Finding(target, f"{type(exc).__name__} message is not one line", repr(message)))
        except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer looks for
            detail = "".join(traceback.format_exception(exc))
            problems.append(Finding(target, f"{type(exc).__name__} escaped", detail, _innermost(exc)))
    after = state()
    changed = [str(path) for path in before if after[path] != before[path]]
    if changed:
        problems.insert(0, Finding(target, "modified its input", ", ".join(changed)))
    if violations:  # first: the guard's refusal may be what escaped
        problems.insert(0, Finding(target, "wrote outside its temporary folder or started a process",
                                   "\n".join(violations)))
    if problems:
        raise problems[0]


# ---------------------------------------------------------------------------------------------
# Media


def image_case(data: bytes) -> tuple[str, bytes]:
    """The suffix and the file content an image input stands for."""
    return IMAGE_SUFFIXES[data[0] % len(IMAGE_SUFFIXES)] if data else ".jpg", data[1:]


def video_case(data: bytes) -> tuple[str, dict, bytes]:
    """The suffix, the sample_video_frames arguments and the file content a video input stands for."""
    selector = data[0] if data else 0
    return (VIDEO_SUFFIXES[selector % len(VIDEO_SUFFIXES)], VIDEO_MODES[(selector // len(VIDEO_SUFFIXES)) % 3],
            data[1:])


def _write_input(workdir: Path, name: str, content: bytes) -> Path:
    folder = workdir / "input"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    path = folder / name
    path.write_bytes(content)
    return path


def _check_rgb(target: str, image, what: str) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and image.shape[0] > 0 and image.shape[1] > 0):
        raise Finding(target, f"{what} is not a non-empty RGB uint8 array",
                      f"{type(image).__name__} {getattr(image, 'shape', None)} {getattr(image, 'dtype', None)}")
    if image.shape[0] * image.shape[1] > FUZZ_MAX_PIXELS:
        raise Finding(target, f"{what} is over the pixel limit", str(image.shape))


def check_image(data: bytes, workdir: Path) -> None:
    suffix, content = image_case(data)
    path = _write_input(workdir, f"input{suffix}", content)

    def call() -> None:
        _check_rgb("image", media.load_image(path), "load_image's result")

    _run("image", call, MediaError, path, [path], workdir)


def check_video(data: bytes, workdir: Path) -> None:
    suffix, mode, content = video_case(data)
    path = _write_input(workdir, f"input{suffix}", content)

    def call() -> None:
        frames = list(media.sample_video_frames(path, **mode, stats={}))
        if not frames:
            raise Finding("video", "sample_video_frames yielded no frame and raised nothing")
        if mode["count"] is not None and len(frames) > mode["count"]:
            raise Finding("video", "more frames than asked for", str(len(frames)))
        indices = [frame.index for frame in frames]
        if indices != sorted(set(indices)) or indices[0] < 0:
            raise Finding("video", "frame indices are not increasing", str(indices))
        for frame in frames:
            _check_rgb("video", frame.image, "a frame")
            if frame.time is not None and not math.isfinite(frame.time):
                raise Finding("video", "a frame's time is not finite", repr(frame.time))

    _run("video", call, MediaError, path, [path], workdir)


def _astronaut(size: int) -> np.ndarray:
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def image_seeds() -> dict[str, bytes]:
    """Small valid images of every type (and variants that reach other code: alpha, palette,
    16 bits, EXIF orientation, CMYK, several pages), random bytes and an empty file per suffix."""
    rng = np.random.default_rng(0)
    face, noise = _astronaut(24), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rgba = np.dstack([face, np.linspace(0, 255, face.size // 3).reshape(24, 24).astype(np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    variants = {
        "astronaut.jpg": (Image.fromarray(face), dict(format="JPEG", quality=80, exif=exif)),
        "noise.jpeg": (Image.fromarray(noise), dict(format="JPEG", progressive=True)),
        "astronaut.png": (Image.fromarray(rgba), dict(format="PNG")),
        "palette.png": (Image.fromarray(face).quantize(8), dict(format="PNG", transparency=0)),
        "grey16.png": (Image.fromarray((noise[..., 0].astype(np.uint16) * 257)), dict(format="PNG")),
        "astronaut.webp": (Image.fromarray(rgba), dict(format="WEBP", quality=50)),
        "noise.webp": (Image.fromarray(noise), dict(format="WEBP", lossless=True)),
        "astronaut.bmp": (Image.fromarray(face), dict(format="BMP")),
        "palette.bmp": (Image.fromarray(noise).quantize(4), dict(format="BMP")),
        "astronaut.tif": (Image.fromarray(face), dict(format="TIFF", compression="tiff_lzw", exif=exif)),
        "cmyk.tiff": (Image.fromarray(noise).convert("CMYK"), dict(format="TIFF")),
        "grey16.tiff": (Image.fromarray((noise[..., 1].astype(np.uint16) * 257)), dict(format="TIFF")),
        "pages.tif": (Image.fromarray(face), dict(format="TIFF", save_all=True,
                                                  append_images=[Image.fromarray(noise)])),
    }
    seeds = {}
    for name, (image, options) in variants.items():
        buffer = io.BytesIO()
        image.save(buffer, **options)
        seeds[name] = bytes([IMAGE_SUFFIXES.index(Path(name).suffix)]) + buffer.getvalue()
    for index, suffix in enumerate(IMAGE_SUFFIXES):
        seeds[f"random{suffix}"] = bytes([index]) + rng.bytes(256)
        seeds[f"empty{suffix}"] = bytes([index])
    return seeds


def _encode_video(suffix: str, codec: str, frames: list[np.ndarray], gop: int) -> bytes:
    import av

    buffer = io.BytesIO()
    container_format = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}[suffix]
    # bitexact: no random segment UID or date, so a seed is the same bytes every time
    with av.open(buffer, mode="w", format=container_format, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        stream.codec_context.thread_count = 1  # the same bytes every time
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def video_seeds() -> dict[str, bytes]:
    """Tiny valid videos (H.264 in MP4, MOV and Matroska, MPEG-4 part 2 in AVI, a keyframe
    every 2 frames so that seeking is used), random bytes and an empty file per suffix; byte 0
    also picks each sampling mode."""
    rng = np.random.default_rng(1)
    face = _astronaut(48)
    frames = [np.ascontiguousarray(face[y:y + 32, x:x + 32]) for x, y in ((0, 0), (4, 2), (8, 4), (12, 8), (16, 16))]
    seeds = {}
    for name, codec in (("pan.mp4", "libx264"), ("pan.mov", "libx264"), ("pan.mkv", "libx264"), ("pan.avi", "mpeg4")):
        suffix = Path(name).suffix
        content = _encode_video(suffix, codec, frames, gop=2)
        for mode in range(len(VIDEO_MODES)):
            selector = VIDEO_SUFFIXES.index(suffix) + mode * len(VIDEO_SUFFIXES)
            seeds[f"{Path(name).stem}-mode{mode}{suffix}"] = bytes([selector]) + content
    for index, suffix in enumerate(VIDEO_SUFFIXES):
        seeds[f"random{suffix}"] = bytes([index]) + rng.bytes(512)
        seeds[f"empty{suffix}"] = bytes([index])
    return seeds


# ---------------------------------------------------------------------------------------------
# Manifests


@dataclass
class BundleSandbox:
    """The default bundle's first model as a one-model bundle in `folder`, with odd entries beside it for a
    manifest to name: links out of the bundle, to /etc/passwd and /dev/zero, a loop, a dangling
    link, a folder and a FIFO (opening one for reading would hang)."""

    folder: Path  # the bundle
    workdir: Path
    base: dict  # its manifest: the default one, with the first model alone
    names: tuple  # file names a mutation may use
    hashes: tuple  # SHA-256 values a mutation may use

    @property
    def entries(self) -> list[Path]:
        return sorted([*self.folder.iterdir(), *(self.workdir / "outside").iterdir()])

    def digest(self) -> dict[str, tuple]:
        """Every file's fingerprint but the manifest's, models included (hashed: slow; for the
        start and the end of a run)."""
        return {str(path): _fingerprint(path) for path in self.entries if path.name != MANIFEST_NAME}


def make_bundle_sandbox(workdir: Path) -> BundleSandbox:
    """The sandbox in `workdir`, made there unless it was already (by another process)."""
    workdir = Path(workdir)
    folder, outside = workdir / "bundle", workdir / "outside"
    # The default bundle's first model alone, under fixed names (the names below refer to them).
    default = json.loads((DEFAULT_BUNDLE / MANIFEST_NAME).read_text(encoding="utf-8"))
    first = default["models"][0]
    base = dict(default, models=[dict(first, file="model.onnx", weight=1.0,
                                      gradient_graph=dict(first["gradient_graph"], file="model.grad.onnx"))])
    if not folder.exists():
        folder.mkdir(parents=True)
        outside.mkdir()
        for source, name in ((first["file"], "model.onnx"), (first["gradient_graph"]["file"], "model.grad.onnx"),
                             ("MODEL_CARD.md", "MODEL_CARD.md")):
            shutil.copyfile(DEFAULT_BUNDLE / source, folder / name)
        os.link(folder / "model.onnx", outside / "model.onnx")
        for name, target in (("outside.onnx", outside / "model.onnx"), ("up.onnx", Path("..") / "outside" / "model.onnx"),
                             ("passwd.onnx", Path("/etc/passwd")), ("zero.onnx", Path("/dev/zero")),
                             ("loop.onnx", Path("loop.onnx")), ("dangling.onnx", workdir / "nothing"),
                             ("card.onnx", Path("MODEL_CARD.md"))):
            (folder / name).symlink_to(target)
        (folder / "dir.onnx").mkdir()
        os.mkfifo(folder / "fifo.onnx")
        (folder / MANIFEST_NAME).write_text(json.dumps(base), encoding="utf-8")
    names = ("model.onnx", "model.grad.onnx", "MODEL_CARD.md", MANIFEST_NAME, "outside.onnx", "up.onnx",
             "passwd.onnx", "zero.onnx", "loop.onnx", "dangling.onnx", "card.onnx", "dir.onnx", "fifo.onnx",
             "../outside/model.onnx", "../../etc/passwd", "/etc/passwd", str(folder / "model.onnx"),
             str(outside / "model.onnx"), "..", ".", "", "sub/model.onnx", "model.onnx/", "model.onnx\x00",
             "C:\\model.onnx", "..\\model.onnx", "~/model.onnx", "a" * 300, "\u202exnno.onnx", "mod\u00e8le.onnx",
             "model.onnx\n", "file:model.onnx", "model.onnx ")
    digests = [hashlib.sha256((folder / name).read_bytes()).hexdigest()
               for name in ("model.onnx", "model.grad.onnx", "MODEL_CARD.md")]
    with contextlib.suppress(OSError):
        digests.append(hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest())
    hashes = (*digests, digests[0].upper(), digests[0][:-1], digests[0] + "0", "0" * 64, "", None, 1)
    return BundleSandbox(folder, workdir, base, names, hashes)


NAN, INF = float("nan"), float("inf")
VALUES = (None, True, False, 0, 1, -1, 2, 0.5, 1.0, -0.0, 2 ** 31, 2 ** 63, 2 ** 64 + 1, 10 ** 400, -10 ** 400,
          NAN, INF, -INF, 5e-324, 1e-320, 1e308, "", " ", "NaN", "1", "\x00", "\n", "\u202e", "\u540d\u524d",
          "\U0001F600", "\ud800", "a" * 5000, [], [1], [0.5, 0.5, 0.5], [0, 0, 0], [NAN] * 3, [1e308] * 3,
          [10 ** 400] * 3, ["real", "fake"], ["fake", "real"], ["real", "real"], ["real", "fake", "fake"], {},
          {"file": "model.onnx"}, {"unavailable": "no graph"}, {"file": None, "sha256": None})
KEYS = ("schema_version", "name", "models", "input", "face_crop", "class_order", "decision_threshold", "temperature",
        "uncertain_band", "file", "sha256", "weight", "bias", "gradient_graph", "size", "mean", "std",
        "normalize_in_graph", "color_order", "layout", "margin", "unavailable", "arch", "__proto__", "")
FREE_FORM = ("training", "calibration", "producer", "cam", "outputs")  # replaced whole, not walked into


def _slots(container, key, out: list) -> list:
    """(container, key) for every value of the manifest, depth first, free-form parts as one."""
    out.append((container, key))
    value = container[key]
    if isinstance(key, str) and key in FREE_FORM:
        return out
    if isinstance(value, dict):
        for inner in list(value):
            _slots(value, inner, out)
    elif isinstance(value, list):
        for inner in range(len(value)):
            _slots(value, inner, out)
    return out


def _mutate(fdp, sandbox: BundleSandbox, root: dict) -> None:
    slots = _slots(root, "manifest", [])
    container, key = slots[fdp.ConsumeIntInRange(0, len(slots) - 1)]
    operation = fdp.ConsumeIntInRange(0, 8)
    if operation == 0:
        del container[key]
    elif operation == 1:
        container[key] = copy.deepcopy(fdp.PickValueInList(list(VALUES)))
    elif operation == 2:
        container[key] = fdp.PickValueInList(list(sandbox.names))
    elif operation == 3:
        container[key] = fdp.PickValueInList(list(sandbox.hashes))
    elif operation == 4:
        container[key] = [fdp.ConsumeInt(9), fdp.ConsumeFloat(), fdp.ConsumeUnicode(24), fdp.ConsumeBool()][
            fdp.ConsumeIntInRange(0, 3)]
    elif operation == 5:  # add a key, or an element
        value = container[key]
        extra = copy.deepcopy(fdp.PickValueInList(list(VALUES)))
        if isinstance(value, dict):
            value[fdp.PickValueInList(list(KEYS))] = extra
        elif isinstance(value, list):
            value.append(copy.deepcopy(value[0]) if value and fdp.ConsumeBool() else extra)
        else:
            container[key] = extra
    elif operation == 6:  # wrap
        container[key] = [container[key]] if fdp.ConsumeBool() else {"value": container[key]}
    elif operation == 7:  # another part of the manifest here
        other_container, other_key = slots[fdp.ConsumeIntInRange(0, len(slots) - 1)]
        container[key] = copy.deepcopy(other_container[other_key])
    else:  # nested deeply
        value = container[key]
        for _ in range(fdp.ConsumeIntInRange(1, 200)):
            value = [value]
        container[key] = value


def manifest_bytes(data: bytes, sandbox: BundleSandbox) -> bytes:
    """The manifest.json a manifest input stands for (see the module docstring)."""
    import atheris

    if not data or data[0] % 2 == 0:
        return data[1:]
    fdp = atheris.FuzzedDataProvider(data[1:])
    root = {"manifest": copy.deepcopy(sandbox.base)}
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        if not root:
            break
        _mutate(fdp, sandbox, root)
    ascii_only = fdp.ConsumeBool()
    text = json.dumps(root.get("manifest"), allow_nan=True, ensure_ascii=ascii_only, indent=2)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes bytes that are not UTF-8


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield str(key)
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)


def _check_bundle(bundle, sandbox: BundleSandbox) -> None:
    if not isinstance(bundle, Bundle):
        raise Finding("manifest", "load_bundle returned something else than a Bundle", repr(type(bundle)))
    checks = {
        "name": isinstance(bundle.name, str) and bundle.name.strip() != "",
        "input_size": isinstance(bundle.input_size, int) and bundle.input_size > 0,
        "margin": math.isfinite(bundle.margin) and bundle.margin > 0,
        "threshold": 0.0 <= bundle.threshold <= 1.0,
        "uncertain_band": 0.0 <= bundle.uncertain_band < 0.5,
        "fake_index": bundle.fake_index in (0, 1),
        "models": len(bundle.models) > 0,
    }
    for model in bundle.models:
        for file in (model.file, model.gradient_graph):
            if file is not None:
                checks[f"{model.name!r} file {file!r} is a plain name"] = Path(file).name == file and file not in ("..", ".")
                checks[f"{model.name!r} file {file!r} is a file"] = (sandbox.folder / file).is_file()
        checks[f"{model.name!r} weight, temperature and bias"] = (
            all(math.isfinite(v) for v in (model.weight, model.temperature, model.bias))
            and model.weight > 0 and model.temperature > 0)
    failed = [name for name, passed in checks.items() if not passed]
    if failed:
        raise Finding("manifest", "load_bundle accepted an out-of-range value", ", ".join(failed))


def check_manifest_text(text: bytes, sandbox: BundleSandbox) -> None:
    """load_bundle on a bundle whose manifest.json is `text`."""
    manifest_path = sandbox.folder / MANIFEST_NAME
    manifest_path.write_bytes(text)
    try:
        parsed = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):
        parsed = None
    allowed = tuple(sorted({s for s in _strings(parsed) if "\n" in s or "\r" in s}, key=len, reverse=True))
    allowed = tuple(str(sandbox.folder / s) for s in allowed) + allowed

    def call() -> None:
        _check_bundle(load_bundle(sandbox.folder), sandbox)

    _run("manifest", call, BundleError, sandbox.folder, [manifest_path], sandbox.workdir, allowed,
         tuple(path for path in sandbox.entries if path != manifest_path))


def check_manifest(data: bytes, sandbox: BundleSandbox) -> None:
    check_manifest_text(manifest_bytes(data, sandbox), sandbox)


def manifest_seeds(sandbox: BundleSandbox) -> dict[str, bytes]:
    """The default manifest as it is (raw), and a few mutations of it."""
    rng = np.random.default_rng(2)
    text = json.dumps(sandbox.base, indent=2).encode()
    seeds = {"default.json": b"\x00" + text, "empty.json": b"\x00", "mutated-0": b"\x01",
             # JSON that Python's parser refuses with other exceptions than JSONDecodeError
             "nested.json": b"\x00" + b"[" * 5000 + b"]" * 5000, "digits.json": b"\x00" + b"9" * 5000}
    for index in range(1, 8):
        seeds[f"mutated-{index}"] = b"\x01" + rng.bytes(24)
    return seeds


# ---------------------------------------------------------------------------------------------


class Target:
    """One fuzz target with its own temporary folder: `check(data)` tests one input."""

    def __init__(self, name: str, workdir: Path):
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r} (one of {', '.join(TARGETS)})")
        self.name, self.workdir = name, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sandbox = make_bundle_sandbox(self.workdir / "sandbox") if name == "manifest" else None
        self._start = self.sandbox.digest() if self.sandbox else None

    def check(self, data: bytes) -> None:
        if self.name == "image":
            check_image(data, self.workdir)
        elif self.name == "video":
            check_video(data, self.workdir)
        else:
            check_manifest(data, self.sandbox)

    def seeds(self) -> dict[str, bytes]:
        return {"image": image_seeds, "video": video_seeds}[self.name]() if self.sandbox is None else \
            manifest_seeds(self.sandbox)

    def materialize(self, data: bytes) -> tuple[str, bytes]:
        """The file an input stands for: its name and bytes (for a reproducer)."""
        if self.name == "image":
            suffix, content = image_case(data)
            return f"input{suffix}", content
        if self.name == "video":
            suffix, mode, content = video_case(data)
            return f"input{suffix}", content
        return MANIFEST_NAME, manifest_bytes(data, self.sandbox)

    def describe(self, data: bytes) -> str:
        if self.name == "video":
            return f"sample_video_frames(path, **{video_case(data)[1]})"
        return {"image": "load_image(path)", "manifest": "load_bundle(a copy of exports/default with this manifest)"}[self.name]

    def verify_intact(self) -> None:
        """The bundle copy's models and links are as they were at the start (hashed)."""
        if self.sandbox is not None and self.sandbox.digest() != self._start:
            raise Finding("manifest", "the bundle's model files changed during the run")


# Tokens the fuzzer may splice in (libFuzzer's -dict), by target: format markers and values
# that reach other branches.
DICTIONARY = {
    "image": (b"\xff\xd8\xff", b"\xff\xe1", b"Exif\x00\x00", b"\xff\xc0", b"\xff\xc2", b"\xff\xda", b"\xff\xd9",
              b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"iCCP", b"eXIf", b"acTL", b"fcTL",
              b"RIFF", b"WEBP", b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"BM", b"II*\x00", b"MM\x00*",
              b"\x12\x01", b"\x01\x12", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff"),
    "video": (b"ftyp", b"moov", b"mvhd", b"trak", b"tkhd", b"mdia", b"mdhd", b"minf", b"stbl", b"stsd", b"stts",
              b"stss", b"stsc", b"stsz", b"stco", b"co64", b"ctts", b"elst", b"edts", b"mdat", b"avc1", b"avcC",
              b"hvc1", b"sidx", b"moof", b"traf", b"trun", b"\x1aE\xdf\xa3", b"matroska", b"webm", b"\x18S\x80g",
              b"\x16T\xaek", b"\x1fC\xb6u", b"\xa3", b"RIFF", b"AVI ", b"LIST", b"hdrl", b"avih", b"strh", b"strf",
              b"movi", b"idx1", b"\x00\x00\x00\x01", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"),
    "manifest": (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"5e-324", b"null", b"true", b"false",
                 b'""', b"[]", b"{}", b'"../../etc/passwd"', b'"/etc/passwd"', b'"\\u0000"', b'"\\ud800"',
                 b"99999999999999999999999999", b'"schema_version"', b'"models"', b'"file"', b'"sha256"',
                 b'"weight"', b'"temperature"', b'"bias"', b'"input"', b'"size"', b'"mean"', b'"std"',
                 b'"decision_threshold"', b'"uncertain_band"', b'"class_order"', b'"gradient_graph"', b'"face_crop"',
                 b'"margin"', b'"fifo.onnx"', b'"zero.onnx"', b'"loop.onnx"', b'"outside.onnx"', b"[[[[[[[[",
                 b'"fake"', b'"real"', b"0.5", b"-1"),
}


def write_dictionary(target: str, path: Path) -> Path:
    """DICTIONARY[target] in libFuzzer's -dict format."""
    def escape(token: bytes) -> str:
        return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)

    path.write_text("".join(f'"{escape(token)}"\n' for token in DICTIONARY[target]), encoding="ascii")
    return path
