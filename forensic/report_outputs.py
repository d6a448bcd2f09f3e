"""Delivering a scan's reports: each output asked for (JSON file or stdout, HTML, CSV) written
in turn, one that fails said on stderr without losing the others, and a record of how far that
got, which is what a Ctrl-C while writing them reports."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from rich.console import Console

from forensic.display import printable
from forensic.html_report import write_html
from forensic.outputs import file_identity, replaced_since
from forensic.report import write_csv, write_report

if TYPE_CHECKING:
    from forensic.scan import FileResult


@dataclass
class ReportOutputs:
    """The outputs asked for: the files, named as given, in the order they are written, and
    whether the JSON report goes to stdout (written last); and, as they are written, how far
    that got: what a Ctrl-C while writing them reports."""

    files: list[str]
    stdout: bool
    written: list[str] = field(default_factory=list)  # the files written whole
    stdout_state: str = "not begun"  # or "cut short", "written"

    @classmethod
    def asked_for(cls, json_out: Optional[str], csv_out: Optional[Path], html_out: Optional[Path]) -> ReportOutputs:
        files = [None if json_out == "-" else json_out, html_out and html_out / "index.html", csv_out]
        return cls([str(path) for path in files if path], stdout=json_out == "-")

    def interrupted(self, lead: str) -> str:
        """One line: `lead`, then the outputs written whole and those not written."""
        if not self.files and not self.stdout:
            return f"{lead}; no report was asked for"
        written = [name for name in self.files if name in self.written]
        not_written = [name for name in self.files if name not in self.written]
        if self.stdout:
            stdout = "the JSON report on stdout"
            (written if self.stdout_state == "written" else not_written).append(
                stdout + (" (cut short)" if self.stdout_state == "cut short" else ""))
        return f"{lead}: written whole: {', '.join(written) or 'none'}; not written: {', '.join(not_written) or 'none'}"


def write_reports(console: Console, errors: Console, outputs: ReportOutputs, report: dict, results: list[FileResult],
                  weights: dict[str, float], json_out: Optional[str], csv_out: Optional[Path],
                  html_out: Optional[Path]) -> bool:
    """Write the report to the outputs asked for, each tried even when another fails (said on
    stderr); whether one could not be written. Files first, stdout last: a reader slow to take
    the report holds no file back. Each written whole is added to `outputs.written`, so that
    Ctrl-C (KeyboardInterrupt, raised on) leaves that record right."""
    writers = []
    if json_out and json_out != "-":
        writers.append(("report", Path(json_out), lambda: write_report(report, Path(json_out))))
    if html_out:
        writers.append(("HTML report", html_out / "index.html", lambda: write_html(report, results, weights, html_out / "index.html")))
    if csv_out:
        writers.append(("CSV summary", csv_out, lambda: write_csv(report, csv_out)))
    unwritten = False
    for what, destination, write in writers:  # each is tried: one that fails does not lose the others
        before = file_identity(destination)
        try:
            written = write()
            outputs.written.append(str(destination))
        except OSError as exc:
            unwritten = True
            errors.print(printable(f"error: {exc.filename or what}: cannot write the {what} ({exc.strerror or exc})"),
                         markup=False, highlight=False, soft_wrap=True)
            continue
        except KeyboardInterrupt:  # as the file was put in place, or before: which, its inode tells
            if str(destination) not in outputs.written and replaced_since(destination, before):
                outputs.written.append(str(destination))
            raise
        console.print(f"{what} written to {printable(str(written))}", markup=False, highlight=False, soft_wrap=True)
    if json_out == "-":
        write_stdout(outputs, json.dumps(report, indent=2) + "\n")
    return unwritten


def write_stdout(outputs: ReportOutputs, text: str) -> None:
    """The JSON report on stdout. Ctrl-C while a reader is slow to take it (a pipe holds 64 KiB)
    leaves it cut short: what is still buffered then goes to /dev/null, not to stdout at exit,
    where a reader that no longer reads would hold the process."""
    outputs.stdout_state = "cut short"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor (a test's runner)
            descriptor = sys.stdout.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, descriptor)
            os.close(devnull)
        raise
    outputs.stdout_state = "written"
