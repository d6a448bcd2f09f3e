"""The one way `forensic` writes a file the user asked for (reports, CSV, HTML, heatmaps, the
TUI's exports and cache): checked against the inputs by device and inode, then written through
a temporary file in the destination's folder and `os.replace`d into place.

Replacing, not writing in place, is what keeps evidence safe even where a check cannot see the
aliasing: an output name that is a hard link to an input gets a new file, and the input's
bytes stay as they were. A reader never sees half a report either.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from forensic.errors import ForensicError


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (same device and inode: hard links, symlinks, `..`)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output(destination: Path, inputs: Iterable[Path]) -> None:
    """Refuse, before anything is scanned, an output that could not be written or that names
    one of the inputs (by path or as the same file); make its folder."""
    if destination.is_dir():
        raise ForensicError(f"{destination}: is a folder, not a file to write to")
    try:
        target = destination.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ForensicError(f"{destination}: cannot be resolved ({exc})") from None
    exists = destination.exists()
    for path in inputs:
        if target == _resolved(path) or (exists and same_file(destination, path)):
            raise ForensicError(f"{destination}: is one of the inputs ({path}), and inputs are never overwritten")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ForensicError(f"{destination.parent}: cannot make the folder ({exc.strerror or exc})") from None


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop or a name too long: it cannot be the destination
        return None


def atomic_write(destination: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(handle)` on a temporary file beside `destination`, flush it to disk, then
    rename it over `destination` (which is replaced, never written into)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".", suffix=destination.suffix + ".partial",
                                         delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        os.replace(handle.name, destination)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return destination


def atomic_write_text(destination: Path, text: str, errors: str = "strict") -> Path:
    return atomic_write(destination, lambda handle: handle.write(text.encode("utf-8", errors=errors)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
