"""Exporting the UI's results with forensic's own report writers (JSON, HTML, CSV)."""

from __future__ import annotations

from pathlib import Path

from forensic.errors import ForensicError
from forensic.html_report import write_html
from forensic.outputs import check_output
from forensic.report import build_report, write_csv, write_report
from forensic.scan import FileResult, Scanner

EXPORT_FORMATS = ("json", "html", "csv")


def is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.expanduser().resolve(), folder.resolve()
    return path == folder or folder in path.parents


def default_export_path(folder: Path, export_format: str, working_dir: Path | None = None) -> Path:
    """`<folder name>-report.<format>` in the working directory, or beside the folder when the
    working directory is inside it (nothing is written into the scanned folder); numbered
    rather than replacing an existing file."""
    working_dir = Path.cwd() if working_dir is None else working_dir
    base = folder.resolve().parent if is_inside(working_dir, folder) else working_dir.resolve()
    stem = f"{folder.resolve().name}-report"
    candidate = base / f"{stem}.{export_format}"
    number = 2
    while candidate.exists():
        candidate = base / f"{stem}-{number}.{export_format}"
        number += 1
    return candidate


def export_results(results: list[FileResult], scanner: Scanner, export_format: str, destination: Path,
                   folder: Path) -> Path:
    """Write the report of `results` to `destination`; refuses a path inside the scanned folder."""
    destination = destination.expanduser()
    if export_format not in EXPORT_FORMATS:
        raise ForensicError(f"unknown export format {export_format!r} (json, html or csv)")
    if is_inside(destination, folder):
        raise ForensicError(f"{destination}: inside the scanned folder {folder}, which is never written to; "
                            f"choose a path outside it")
    if destination.is_dir():
        raise ForensicError(f"{destination}: is a folder; give a file name")
    check_output(destination, [Path(result.path) for result in results])  # e.g. a hard link to a scanned file
    report = build_report(results, scanner)
    try:
        if export_format == "json":
            write_report(report, destination)
        elif export_format == "csv":
            write_csv(report, destination)
        else:
            weights = {name: scanner.runner.model_weight(name) for name in scanner.runner.sessions}
            write_html(report, results, weights, destination)
    except OSError as exc:
        raise ForensicError(f"{destination}: cannot write the report ({exc.strerror or exc})") from None
    return destination
