"""The hostile corpus (issue 14), generated here: every file kind of tests/hostile_corpus.py in
one folder beside known-good media, scanned by one real `forensic scan` process; every option,
bundle and output kind of tests/hostile_commands.py as a command of its own. Each kind is its
own test: it is listed in the report, its error is one line naming the file (or, for a command,
the option, bundle or output), the good files still get their verdicts, no input changes
(SHA-256 and mtime), and the exit status is the README's."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensic.bundle import DEFAULT_BUNDLE
from forensic.cli import app
from forensic.display import printable
from hostile_commands import COMMAND_KINDS, CommandKind
from hostile_corpus import ANALYSED, ERROR, FILE_KINDS, FileKind, Sources

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VERDICTS = {"real", "fake", "uncertain", "no-face"}


def _able(trial) -> bool:
    """Whether `trial(folder)` succeeds in a scratch folder: what this process may do, whoever
    it runs as (root without CAP_DAC_OVERRIDE is held to file modes, as a user is)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            trial(Path(folder))
            return True
        except PermissionError:
            return False


def _open_locked(folder: Path) -> None:
    (folder / "locked").write_bytes(b"")
    (folder / "locked").chmod(0)
    (folder / "locked").open("rb").close()


CAN = {"modes": not _able(_open_locked), "mknod": _able(lambda folder: os.mknod(folder / "zero", 0o600 | stat.S_IFCHR,
                                                                               os.makedev(1, 5)))}


def applicable(needs: str | None) -> bool:
    return needs is None or CAN[needs]


def skip_unless_applicable(needs: str | None) -> None:
    if not applicable(needs):
        pytest.skip("file modes do not hold this process (root)" if needs == "modes" else "this process cannot make devices")


def snapshot(*tops: Path) -> dict[str, tuple]:
    """Every entry under the folders, by path: a regular file's SHA-256 (under 4 MB: the
    bundle's models are pinned by inode, size and mtime), size and mtime; a link's target;
    anything else its type and mtime (a folder, its type alone). A file the user cannot read
    (a permission kind) by inode, size and mtime."""
    state = {}
    for top in tops:
        for folder, dirs, names in os.walk(top):
            for name in dirs + names:
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                except OSError:  # past PATH_MAX (a kind): os.walk stops there too
                    state[path] = ("unreachable",)
                    continue
                if stat.S_ISLNK(info.st_mode):
                    state[path] = ("link", os.readlink(path))
                elif stat.S_ISREG(info.st_mode):
                    small = info.st_size < 4 << 20 and os.access(path, os.R_OK)
                    content = hashlib.sha256(Path(path).read_bytes()).hexdigest() if small else info.st_ino
                    state[path] = ("file", content, info.st_size, info.st_mtime_ns)
                else:
                    state[path] = (stat.S_IFMT(info.st_mode), 0 if stat.S_ISDIR(info.st_mode) else info.st_mtime_ns)
    return state


def _restore_modes(top: Path) -> None:
    """Locked folders back to rwx, so the temporary tree can be removed."""
    for folder, dirs, _ in os.walk(top):
        for name in dirs:
            path = os.path.join(folder, name)
            if len(os.fsencode(path)) < 4096 and not os.path.islink(path):
                os.chmod(path, 0o755)


# --------------------------------------------------------------------------------------------
# The file kinds: one batch, one real scan

@dataclass
class Batch:
    root: Path
    expected: dict[str, list[str]]  # kind -> the paths its report entries must have
    entries: dict[str, list[dict]]  # kind -> its report entries
    report: dict
    returncode: int
    stderr_lines: list[str]
    before: dict[str, tuple]
    after: dict[str, tuple]
    good: dict[str, dict]  # the known-good files' entries, by name


def _owner(path: str, root: Path) -> str:
    """The kind a report entry belongs to (its folder under batch/ or named/), or a good file's name."""
    parts = Path(os.path.relpath(path, root)).parts
    return parts[1] if len(parts) > 2 else parts[-1]


def _folder(kind: FileKind, root: Path) -> Path:
    return root / ("named" if kind.named else "batch") / kind.name


@pytest.fixture(scope="module")
def batch(tmp_path_factory, sample_media) -> Batch:
    root = tmp_path_factory.mktemp("hostile")
    for folder in ("batch", "named", "aside"):
        (root / folder).mkdir()
    sources = Sources(face=sample_media["astronaut.png"], plain=sample_media["coffee_no_face.jpg"],
                      clip=sample_media["astronaut_pan.mp4"], aside=root / "aside")
    shutil.copy(sources.clip, sources.aside / "payload.mp4")
    shutil.copy(sources.plain, sources.aside / "payload.jpg")
    expected, named = {}, []
    for kind in FILE_KINDS:
        if not applicable(kind.needs):
            continue
        folder = _folder(kind, root)
        folder.mkdir()
        paths = kind.make(folder, sources)
        expected[kind.name] = sorted(map(str, paths))
        named += paths if kind.named else []
    good = {"good-face.png": sources.face, "good-clip.mp4": sources.clip}
    for name, source in good.items():
        shutil.copy(source, root / "batch" / name)
    listing = root / "named.txt"
    listing.write_bytes(b"".join(os.fsencode(path) + b"\n" for path in named))
    before = snapshot(root / "batch", root / "named", root / "aside")
    try:
        # --quiet: stderr holds the error lines and nothing else. --frames 4 keeps the videos quick.
        process = subprocess.run([sys.executable, "-m", "forensic", "scan", str(root / "batch"), "--from", str(listing),
                                  "--json", str(root / "report.json"), "--frames", "4", "--quiet"],
                                 capture_output=True, cwd=root, timeout=300)  # a FIFO opened would hang it
        after = snapshot(root / "batch", root / "named", root / "aside")
    finally:
        _restore_modes(root)
    report = json.loads((root / "report.json").read_text())
    entries: dict[str, list[dict]] = {}
    for entry in report["files"]:
        entries.setdefault(_owner(entry["path"], root), []).append(entry)
    stderr = process.stderr.decode("utf-8", errors="replace")
    return Batch(root, expected, entries, report, process.returncode, stderr.splitlines(), before, after,
                 {name: entries.get(name, [None])[0] for name in good})


@pytest.mark.parametrize("kind", FILE_KINDS, ids=[kind.name for kind in FILE_KINDS])
def test_file_kind(kind: FileKind, batch: Batch):
    skip_unless_applicable(kind.needs)
    entries = batch.entries.get(kind.name, [])
    assert sorted(entry["path"] for entry in entries) == batch.expected[kind.name], "listed in the report, once"
    for entry in entries:
        if kind.expect == ERROR:
            assert entry["verdict"] == "error" and entry["score"] is None, entry
            assert entry["error"].startswith(entry["path"] + ": ") and kind.message in entry["error"], entry["error"]
            assert f"error: {printable(entry['error'])}" in batch.stderr_lines, "its error is one line on stderr"
        else:
            assert entry["verdict"] in VERDICTS and entry["error"] is None and len(entry["sha256"]) == 64, entry
    folder = str(_folder(kind, batch.root))
    mine = {path: state for path, state in batch.before.items() if path.startswith(folder + os.sep)}
    assert {path: batch.after.get(path) for path in mine} == mine, "its files keep their bytes and mtimes"


def test_the_batch_is_scanned_whole_with_the_documented_exit_status(batch: Batch):
    assert batch.returncode == 1, batch.stderr_lines[-5:]  # README: 1 when some files could not be analysed
    assert batch.good["good-face.png"]["verdict"] in VERDICTS - {"no-face"}
    assert batch.good["good-clip.mp4"]["verdict"] in VERDICTS - {"no-face"}
    assert batch.good["good-clip.mp4"]["frames_analyzed"] == 4
    assert batch.report["complete"] is True and batch.report["not_scanned"] == []
    listed = [entry["path"] for entry in batch.report["files"]]
    assert len(listed) == len(set(listed)) == sum(map(len, batch.expected.values())) + len(batch.good)


def test_stderr_holds_one_line_per_error_and_nothing_else(batch: Batch):
    errors = [f"error: {printable(entry['error'])}" for entry in batch.report["files"] if entry["verdict"] == "error"]
    # No traceback, no decoder log, no line a name could break; in the order files finish (a
    # batch this size is scanned by two worker processes).
    assert sorted(batch.stderr_lines) == sorted(errors)
    assert batch.before == batch.after, "nothing in the corpus changed, and nothing was written into it"


def test_the_corpus_has_at_least_60_kinds_of_every_class():
    names = [kind.name for kind in FILE_KINDS] + [kind.name for kind in COMMAND_KINDS]
    assert len(names) == len(set(names)) and len(names) >= 60
    assert {kind.group for kind in FILE_KINDS} == {"media", "container", "link", "special", "permission", "name"}
    assert {kind.group for kind in COMMAND_KINDS} == {"option", "bundle", "output"}
    assert {kind.expect for kind in FILE_KINDS} == {ANALYSED, ERROR}


# --------------------------------------------------------------------------------------------
# The command kinds: options, bundles and outputs, one command each

def _limited_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))  # the heap, not mapped libraries


@pytest.mark.parametrize("kind", COMMAND_KINDS, ids=[kind.name for kind in COMMAND_KINDS])
def test_command_kind(kind: CommandKind, tmp_path, sample_media):
    skip_unless_applicable(kind.needs)
    work = tmp_path / "work"
    work.mkdir()
    image = tmp_path / "input.jpg"
    shutil.copy(sample_media["coffee_no_face.jpg"], image)
    run = kind.make(work, image)
    args = ["scan", *([str(image)] if run.image else []), *run.args]
    before = snapshot(tmp_path, DEFAULT_BUNDLE)
    try:
        if kind.isolate:  # a real process, bounded: a regression must fail the test, not the machine
            process = subprocess.run([sys.executable, "-m", "forensic", *args], capture_output=True, text=True,
                                     timeout=60, preexec_fn=_limited_memory, stdin=subprocess.DEVNULL)
            code, output, exception = process.returncode, process.stdout + process.stderr, None
        else:
            result = CliRunner().invoke(app, args)
            code, output, exception = result.exit_code, result.output, result.exception
    finally:
        _restore_modes(tmp_path)
    assert not isinstance(exception, Exception) or isinstance(exception, SystemExit), repr(exception)
    assert code == kind.exit, output
    if kind.exit == 2:  # README: bad usage or an unusable bundle, nothing scanned
        assert output.startswith("error: ") and output.count("\n") == 1, output
        assert printable(run.names) in output and kind.message in output, output
        assert snapshot(tmp_path, DEFAULT_BUNDLE) == before, "nothing written, no input changed"
    else:
        assert "error" not in output and run.after is not None
        run.after()
        assert snapshot(tmp_path)[str(image)] == before[str(image)]
