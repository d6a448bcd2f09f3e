"""Ctrl-C once every file is scanned, while the reports are written (`forensic scan`, `forensic
merge`): exit 130 and one line naming the outputs written whole and those not; no output half
written, no temporary file left. Ctrl-C during the scan itself: tests/test_scan_cli.py."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forensic.cli import app
from forensic.outputs import _ctrl_c_held, atomic_write, atomic_write_text, file_identity, replaced_since
from forensic.report_outputs import ReportOutputs

PHOTOS = 8  # a report of 8 photos (~1.4 KiB each) is thrice a pipe of one page (4 KiB)


@pytest.fixture(scope="module")
def photos(sample_media, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for n in range(PHOTOS):
        shutil.copy(sample_media["astronaut.png"], folder / f"{n}.png")
    return folder


def ctrl_c_once_stdout_begins(arguments: list[str]) -> tuple[int, bytes, str]:
    """Run `python -m forensic ARGUMENTS` (with --json -) with stdout a pipe of one page that is
    not read until SIGINT (what Ctrl-C sends) is sent, as soon as the first bytes are there. The
    JSON report is the last output written, and the process cannot get past writing it while its
    larger part is not read: the signal lands in that write, every time, with no waiting on a
    clock. The exit status, what reached stdout and stderr."""
    read_end, write_end = os.pipe()
    assert fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096) == 4096  # Linux: the smallest a pipe can be
    # A shell that runs the tests in the background starts them with SIGINT ignored, and an ignored
    # signal stays ignored across exec: start the command as a terminal's foreground process is.
    process = subprocess.Popen([sys.executable, "-m", "forensic", *arguments], stdout=write_end, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(write_end)
    with open(read_end, "rb") as stdout_pipe:
        select.select([stdout_pipe], [], [])
        process.send_signal(signal.SIGINT)
        stdout = stdout_pipe.read()
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert "Traceback" not in stderr, stderr
    with pytest.raises(json.JSONDecodeError):  # the report on stdout was cut short
        json.loads(stdout)
    assert stdout.startswith(b"{")
    return process.returncode, stdout, stderr


def test_ctrl_c_as_a_scan_writes_its_reports_says_which_are_whole_and_exits_130(photos, tmp_path):
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.iterdir()}
    out = tmp_path / "out"
    csv_path, html_dir = out / "summary.csv", out / "html"
    code, _, stderr = ctrl_c_once_stdout_begins(["scan", str(photos), "--json", "-", "--csv", str(csv_path),
                                                 "--html", str(html_dir)])
    assert code == 130, stderr
    assert (f"interrupted: all {PHOTOS} files were scanned, but the writing of the reports was interrupted: written "
            f"whole: {html_dir / 'index.html'}, {csv_path}; not written: the JSON report on stdout (cut short)\n") in stderr
    assert [row["path"] for row in csv.DictReader(open(csv_path))] == [str(photos / f"{n}.png") for n in range(PHOTOS)]
    assert (html_dir / "index.html").read_text().rstrip().endswith("</html>")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["html", "html/index.html", "summary.csv"]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.iterdir()} == before


def test_ctrl_c_as_a_merge_writes_its_reports_says_which_are_whole_and_exits_130(photos, tmp_path):
    shard = tmp_path / "shard-0.json"
    assert CliRunner().invoke(app, ["scan", str(photos), "--shard", "0/1", "--json", str(shard)]).exit_code == 0
    csv_path = tmp_path / "merged.csv"
    code, _, stderr = ctrl_c_once_stdout_begins(["merge", str(shard), "--json", "-", "--csv", str(csv_path)])
    assert code == 130, stderr
    assert (f"interrupted as the merged report was written: written whole: {csv_path}; "
            f"not written: the JSON report on stdout (cut short)\n") in stderr
    assert len(list(csv.DictReader(open(csv_path)))) == PHOTOS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.csv", "shard-0.json"]


@pytest.fixture()
def ctrl_c_raises():
    """SIGINT handled as Python's default does (KeyboardInterrupt), even where the test run was
    started with it ignored (in the background)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_an_atomic_write_leaves_the_old_file_and_no_temporary_one(tmp_path, ctrl_c_raises):
    report = tmp_path / "report.json"
    report.write_text("the old report\n")
    before = file_identity(report)

    def write_half_then_ctrl_c(handle):
        handle.write(b'{"half": ')
        handle.flush()
        signal.raise_signal(signal.SIGINT)  # a real SIGINT: its handler raises KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(report, write_half_then_ctrl_c)
    assert report.read_text() == "the old report\n" and not replaced_since(report, before)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no .report.json.partial left
    atomic_write_text(report, "{}\n")
    assert report.read_text() == "{}\n" and replaced_since(report, before)
    assert not replaced_since(tmp_path / "new.csv", None)
    atomic_write_text(tmp_path / "new.csv", "path\n")
    assert replaced_since(tmp_path / "new.csv", None)

    # Where Ctrl-C is held (making the temporary file, renaming it): raised as the block ends, not in it.
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with _ctrl_c_held():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]


def test_the_interrupted_line_names_the_outputs_written_whole_and_those_not():
    lead = "interrupted: all 3 files were scanned, but the writing of the reports was interrupted"
    assert ReportOutputs.asked_for(None, None, None).interrupted(lead) == f"{lead}; no report was asked for"
    outputs = ReportOutputs.asked_for("r.json", Path("s.csv"), Path("html"))
    assert outputs.interrupted(lead) == f"{lead}: written whole: none; not written: r.json, html/index.html, s.csv"
    outputs.written += ["r.json", "html/index.html"]
    assert outputs.interrupted(lead) == f"{lead}: written whole: r.json, html/index.html; not written: s.csv"
    outputs = ReportOutputs.asked_for("-", Path("s.csv"), None)
    outputs.written.append("s.csv")
    assert outputs.interrupted(lead) == f"{lead}: written whole: s.csv; not written: the JSON report on stdout"
    outputs.stdout_state = "written"
    assert outputs.interrupted(lead) == f"{lead}: written whole: s.csv, the JSON report on stdout; not written: none"
