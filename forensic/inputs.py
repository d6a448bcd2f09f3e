"""Finding the inputs: which files under a path are images or videos, and the check every
input passes before it is opened (forensic.media decodes them)."""

from __future__ import annotations

import os
import stat
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Literal

from forensic.errors import MediaError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})

MediaKind = Literal["image", "video"]


def media_kind(path: Path) -> MediaKind | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _matches(path: Path, root: Path, patterns: Iterable[str]) -> bool:
    relative = path.relative_to(root).as_posix()
    return any(fnmatch(relative, pattern) or fnmatch(path.name, pattern) for pattern in patterns)


def collect_inputs(paths: Iterable[Path], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Path]:
    """Expand folders (recursively, sorted) into their image and video files, keeping those
    that match an `include` glob (all when none is given) and no `exclude` glob; globs match
    the path relative to the folder or the file name.

    Files named explicitly are always kept, whatever their type, so that a file the user asked
    for is reported (as an error if need be) rather than silently dropped. A file reached twice
    (named twice, or also inside a folder given) is scanned once, under its first name. A
    sub-folder that cannot be listed (no permission, a path over the system's length limit) is
    kept too, so its scan reports why (symlinked folders are not followed, as before), and so
    is every name with a media suffix that is not a regular file (a FIFO, a device, a socket,
    a broken link or a link loop): `check_input` refuses it, never opened.
    """
    return [path for path, _ in collect_keyed_inputs(paths, include, exclude)]


def collect_keyed_inputs(paths: Iterable[Path], include: Iterable[str] = (),
                         exclude: Iterable[str] = ()) -> list[tuple[Path, str]]:
    """`collect_inputs`, each path with its key: the path relative to the folder given that it
    was found in (`sub/a.jpg`), or a path named directly as it was given (`./a.jpg` is `a.jpg`),
    in POSIX form. The key does not depend on where the folder is (`forensic scan --shard`)."""
    include, exclude = tuple(include), tuple(exclude)
    found: list[tuple[Path, str]] = []
    for path in paths:
        try:
            is_dir = path.is_dir()
        except OSError:  # unreadable or a name too long: reported as that file's error, not a crash
            is_dir = False
        if not is_dir:
            found.append((path, path.as_posix()))
            continue
        inside: list[Path] = []
        for folder, _, names in os.walk(path, onerror=lambda exc: inside.append(Path(exc.filename))):
            for name in names:  # all but folders, by name alone: its scan says what it is
                p = Path(folder) / name
                if media_kind(p) is not None and (not include or _matches(p, path, include)) \
                        and not _matches(p, path, exclude):
                    inside.append(p)
        found.extend((p, Path(os.path.relpath(p, path)).as_posix()) for p in sorted(inside))
    seen: set[str] = set()
    unique = []
    for path, key in found:
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            real = str(path)
        if real not in seen:
            seen.add(real)
            unique.append((path, key))
    return unique


_FILE_TYPES = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}


def check_input(path: Path) -> None:
    """The check every input passes before it is opened: a regular file, after symbolic links.
    A FIFO would block the scan forever and a device never end (/dev/zero), and neither is
    evidence a hash can pin. Raises MediaError saying what the path is instead."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise MediaError(f"{path}: a broken symbolic link (to {os.readlink(path)})") from None
        raise MediaError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # a link loop, a name too long, no permission to reach it
        raise MediaError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(mode):
        try:
            os.listdir(path)
        except OSError as exc:
            raise MediaError(f"{path}: cannot read the folder ({exc.strerror or exc}); its files were not scanned") from None
        raise MediaError(f"{path}: is a folder")
    if not stat.S_ISREG(mode):
        raise MediaError(f"{path}: not a regular file ({_FILE_TYPES.get(stat.S_IFMT(mode), 'of an unknown type')}); "
                         f"never opened")


def read_path_list(lines: Iterable[str]) -> list[Path]:
    """Paths from a list file or stdin: one per line; blank lines and '#' comments skipped."""
    return [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
