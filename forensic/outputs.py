"""The one way `forensic` writes a file the user asked for (reports, CSV, HTML, heatmaps, the
TUI's exports and cache): checked against the inputs by device and inode, then written through
a temporary file in the destination's folder and `os.replace`d into place.

Replacing, not writing in place, is what keeps evidence safe even where a check cannot see the
aliasing: an output name that is a hard link to an input gets a new file, and the input's
bytes stay as they were. A reader never sees half a report either, nor does Ctrl-C leave one:
an interrupted write removes its temporary file, and the destination is then either the file
it was or the whole new one (`replaced_since` tells which).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from forensic.errors import ForensicError


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (same device and inode: hard links, symlinks, `..`)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output(destination: Path, inputs: Iterable[Path], bundle_files: Iterable[Path] = ()) -> None:
    """Refuse, before anything is scanned, an output that could not be written or that names
    one of the inputs or of the bundle's files (by path or as the same file); make its folder."""
    try:
        target = destination.resolve()
        kind = os.stat(destination).st_mode if destination.exists() else None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop; OSError: a name too long
        raise ForensicError(f"{destination}: cannot be resolved ({getattr(exc, 'strerror', None) or exc})") from None
    if kind is not None and stat.S_ISDIR(kind):
        raise ForensicError(f"{destination}: is a folder, not a file to write to")
    if kind is not None and not stat.S_ISREG(kind):
        # Replacing it would replace a device node or a FIFO (as root, /dev/stdout itself).
        raise ForensicError(f"{destination}: is not a regular file (a device, FIFO or socket); reports are written "
                            f"to files (--json - for stdout)")
    for paths, what in ((inputs, "one of the inputs"), (bundle_files, "one of the bundle's files")):
        for path in paths:
            if target == _resolved(path) or (kind is not None and same_file(destination, path)):
                raise ForensicError(f"{destination}: is {what} ({path}), and those are never overwritten")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ForensicError(f"{destination.parent}: cannot make the folder ({exc.strerror or exc})") from None
    if not os.access(destination.parent, os.W_OK | os.X_OK):  # found now, not once the scan is done
        raise ForensicError(f"{destination.parent}: cannot write in the folder (permission denied or read-only)")


def check_outputs(destinations: list[Path], inputs: Iterable[Path], bundle_files: Iterable[Path] = ()) -> None:
    """`check_output` for each, and no two naming one file: the second would replace the first."""
    inputs, bundle_files = list(inputs), list(bundle_files)
    for index, destination in enumerate(destinations):
        check_output(destination, inputs, bundle_files)
        for earlier in destinations[:index]:
            if destination.resolve() == earlier.resolve() or same_file(destination, earlier):
                raise ForensicError(f"{destination}: is also the destination of another output ({earlier}); "
                                    f"give each its own file")


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop or a name too long: it cannot be the destination
        return None


def atomic_write(destination: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(handle)` on a temporary file beside `destination`, flush it to disk, then
    rename it over `destination` (which is replaced, never written into). On any exception,
    Ctrl-C included, the temporary file is removed; Ctrl-C is held off while the temporary file
    is made (before its name is known) and while it is renamed or removed."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle = None
    try:
        with _ctrl_c_held():  # one held here is raised once `handle` names the file, which is then removed
            handle = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".",
                                                 suffix=destination.suffix + ".partial", delete=False)
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        with _ctrl_c_held():  # a Ctrl-C held here is raised once the rename is done: the destination is whole
            os.replace(handle.name, destination)
    except BaseException:
        if handle is not None:
            with _ctrl_c_held():
                handle.close()
                Path(handle.name).unlink(missing_ok=True)
        raise
    return destination


def file_identity(path: Path) -> tuple[int, int] | None:
    """The file at `path` now (device and inode), or None where there is none."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def replaced_since(path: Path, before: tuple[int, int] | None) -> bool:
    """Whether an `atomic_write` to `path` has put its file in place since `file_identity(path)`
    gave `before`: it renames a new file over the destination, so the destination is then
    another file (the old one still existed when the new one was made: no inode is shared)."""
    now = file_identity(path)
    return now is not None and now != before


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) held for the block, then acted on as it would have been (KeyboardInterrupt
    raised as the block ends). A handler that records it, not a blocked signal: a signal blocked
    in this thread alone goes to another (ONNX Runtime's, PyTorch's), and Python's handler would
    still run here. Handlers run in the main thread only, so elsewhere there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # None: a handler not set from Python, which could not be put back
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, held[0])
        elif held and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def atomic_write_text(destination: Path, text: str, errors: str = "strict") -> Path:
    return atomic_write(destination, lambda handle: handle.write(text.encode("utf-8", errors=errors)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
