"""`forensic`: the command line. Thin: parsing and printing; the work is in forensic.scan."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from forensic import AGGREGATIONS, DEFAULT_AGGREGATION, DEFAULT_DETECT_EVERY, DEFAULT_FRAMES, __version__
from forensic.bundle import DEFAULT_BUNDLE
from forensic.display import VERDICT_STYLE, printable
from forensic.errors import ForensicError

if TYPE_CHECKING:  # the scan's modules (PyTorch, MTCNN, ONNX Runtime) load in the command that needs them
    from forensic.scan import FileResult
    from forensic.selftest import SelfTestSettings

# Exit codes, for pipelines.
EXIT_FILE_ERRORS = 1  # the scan completed but some files could not be analysed or an output not written
EXIT_USAGE = 2  # bad arguments or an unusable bundle (Typer also uses 2); nothing was scanned
EXIT_FAKE_FOUND = 3  # only with --fail-on-fake
EXIT_INTERRUPTED = 130  # Ctrl-C: the report (marked incomplete) holds the files finished before it; or, once all
# were scanned, the reports were being written: a line says which are written whole
# A worker process starts in seconds (PyTorch, MTCNN, ONNX Runtime): by default parallel scanning
# starts once there are this many files per worker.
FILES_PER_WORKER = 16

class _OneLineUsageErrors(typer.core.TyperGroup):
    """Click reports a bad option in four lines (usage, a hint, a blank, the error); forensic's
    own usage errors are one line, `error: ...`, and so are Click's here, so that a pipeline's
    log holds one line per refusal. Exit status 2 as before."""

    def main(self, args=None, *rest, **kwargs):
        if not (sys.argv[1:] if args is None else args) or not kwargs.get("standalone_mode", True):
            return super().main(args, *rest, **kwargs)  # no arguments: the help text, as before
        try:
            code = super().main(args, *rest, **{**kwargs, "standalone_mode": False})
        except typer.TyperException as exc:  # Click's errors, as Typer carries them
            command = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
            typer.echo(f"error: {printable(exc.format_message())}{command}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _path(value) -> Path:
    """A path argument or option: an empty string (an unset shell variable) is refused, where
    Path('') would quietly be the current folder."""
    if isinstance(value, Path):
        return value
    if value == "":
        raise typer.BadParameter("an empty string is not a path")
    return Path(value)


def _text_path(value) -> str:
    """`_path` for an option that also takes '-' (stdout or stdin), kept as text."""
    return str(_path(value)) if value != "-" else value


app = typer.Typer(
    cls=_OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Find faces in images and videos and judge each file real or fake with an ONNX detector bundle.",
    epilog=(
        "Examples:\n\n"
        "  forensic scan video.mp4\n\n"
        "  forensic scan photos/ clips/ --json report.json\n\n"
        "  forensic scan folder/ --json - | jq '.files[] | select(.verdict==\"fake\")'"
    ),
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"forensic {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    pass


def _table(results: list[FileResult]) -> Table:
    table = Table(title=None)
    for column, justify in (("file", "left"), ("verdict", "left"), ("score", "right"), ("faces", "right"), ("frames", "right")):
        table.add_column(column, justify=justify)
    for r in results:
        score = "-" if r.score is None else f"{r.score:.3f}"
        # File names are data, never markup ('[id].mp4' is a common download name) nor terminal codes.
        table.add_row(Text(printable(r.path)), Text(r.verdict, style=VERDICT_STYLE[r.verdict]), score, str(r.faces), str(r.frames_analyzed))
    return table


@app.command(
    epilog=(
        "Exit status: 0 the scan completed (fakes or not); 1 some files could not be analysed (or a report "
        "could not be written); "
        "2 bad usage or an unusable bundle; 3 a fake was found, with --fail-on-fake (it wins over 1); "
        "130 interrupted (Ctrl-C): during the scan, the reports asked for are written, marked incomplete, with the "
        "files finished; once every file is scanned, as the reports are written, a line names those written whole "
        "and those not (a file is never left half written; the JSON report on stdout is cut short)."
    )
)
def scan(
    paths: Optional[list[Path]] = typer.Argument(None, parser=_path, help="Images, videos and folders (searched recursively)."),
    from_list: Optional[str] = typer.Option(None, "--from", parser=_text_path, help="Also scan the paths listed in FILE (one per line), or on stdin with '-'."),
    include: list[str] = typer.Option([], "--include", help="In folders, only files matching this glob (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="In folders, skip files matching this glob (repeatable)."),
    bundle: Path = typer.Option(DEFAULT_BUNDLE, "--bundle", "-b", parser=_path, help="Detector bundle folder (has manifest.json)."),
    json_out: Optional[str] = typer.Option(None, "--json", parser=_text_path, help="Write the JSON report to FILE, or to stdout with '-'."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", parser=_path, help="Write a one-row-per-file CSV summary to FILE."),
    frames: int = typer.Option(DEFAULT_FRAMES, "--frames", min=1, help="Frames sampled evenly from each video."),
    fps: Optional[float] = typer.Option(None, "--fps", min=0.001, help="Instead of --frames: sample this many frames per second."),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0, help="Override the bundle's decision threshold."),
    uncertain_band: Optional[float] = typer.Option(None, "--uncertain-band", min=0.0, max=0.499, help="Scores within ±band of the threshold are 'uncertain' (default: the bundle's)."),
    aggregation: str = typer.Option(DEFAULT_AGGREGATION, "--aggregate", help="How an identity's face scores combine: mean, confident (the DFDC winner's strategy) or max."),
    min_face: int = typer.Option(40, "--min-face", min=12, help="Ignore faces smaller than this many pixels."),
    detect_every: int = typer.Option(DEFAULT_DETECT_EVERY, "--detect-every", min=1, help="In videos, detect faces in full on every K-th analysed frame and follow them in between with MTCNN's last network, detecting again at once when a face is lost; 1 detects every frame."),
    heatmaps: Optional[Path] = typer.Option(None, "--heatmaps", parser=_path, help="Write a heatmap PNG per identity (its most fake face) to DIR."),
    html_out: Optional[Path] = typer.Option(None, "--html", parser=_path, help="Write a self-contained HTML report to DIR/index.html."),
    self_test: bool = typer.Option(False, "--self-test", help="Attack each verdict with PGD (SPSA without gradient graphs) and report the smallest ε that pushes the score across the threshold."),
    self_test_eps: str = typer.Option("1/255,2/255,4/255,8/255", "--self-test-eps", help="The ε schedule, comma-separated (fractions allowed), pixels in [0, 1]."),
    self_test_steps: int = typer.Option(10, "--self-test-steps", min=1, help="PGD steps per ε."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if it truly loads, else CPU), cpu or cuda."),
    fail_on_fake: bool = typer.Option(False, "--fail-on-fake", help="Exit with status 3 when any file is judged fake."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Scan only shard I of N (0 <= I < N, e.g. 3/16): the files whose path relative to the folder given (a file named directly: its path as given) hashes to I; 'forensic merge' joins the N reports."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=1, help=f"Processes scanning files in parallel, each with one thread (default: the cores, {os.cpu_count()}, once there are {FILES_PER_WORKER} files for each; fewer files are scanned in this process, as a worker's start-up costs seconds)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table or progress; only errors (and --json - output)."),
) -> None:
    """Scan images, videos and folders; print a verdict per file and optionally a JSON report."""
    from forensic.bundle import load_bundle
    from forensic.inputs import collect_keyed_inputs, read_path_list

    json_to_stdout = json_out == "-"
    # With --json -, stdout carries the report and nothing else.
    console = Console(stderr=json_to_stdout, quiet=quiet)
    errors = Console(stderr=True)
    if device not in ("auto", "cpu", "cuda"):
        _usage_error(errors, f"--device must be auto, cpu or cuda, not {device!r}")
    if aggregation not in AGGREGATIONS:
        _usage_error(errors, f"--aggregate must be {', '.join(AGGREGATIONS[:-1])} or {AGGREGATIONS[-1]}, not {aggregation!r}")
    for option, value in (("--fps", fps), ("--threshold", threshold), ("--uncertain-band", uncertain_band)):
        if value is not None and not math.isfinite(value):  # 'inf' passes a lower bound
            _usage_error(errors, f"{option} must be a finite number, not {value}")
    try:
        if shard is not None:
            from forensic.shards import parse_shard, select_shard  # loads the scan's modules (PyTorch)
        part = parse_shard(shard) if shard is not None else None
    except ForensicError as exc:
        _usage_error(errors, str(exc))
    requested = list(paths or [])
    if from_list:
        requested += read_path_list(_path_list_lines(errors, from_list))
    if not requested:
        _usage_error(errors, "nothing to scan: give paths or --from FILE")
    settings = dict(device=device, frames=frames, fps=fps, threshold=threshold, uncertain_band=uncertain_band,
                    aggregation=aggregation, min_face=min_face, detect_every=detect_every, heatmap_dir=heatmaps, keep_crops=html_out is not None,
                    self_test=_self_test_settings(errors, self_test_eps, self_test_steps) if self_test else None)
    try:
        loaded = load_bundle(bundle)
    except ForensicError as exc:
        _usage_error(errors, str(exc))
    listing = collect_keyed_inputs(requested, include=include, exclude=exclude)
    if not listing:
        _usage_error(errors, "no images or videos found in " + ", ".join(map(str, requested)))
    listed = [path for path, _ in listing]
    selection = select_shard(listing, part) if part else None  # a shard's other files are never opened
    inputs = selection.paths if selection else listed
    # Now, before the models load, not after an hour of scanning.
    _check_outputs(errors, json_out, csv_out, html_out, listed, loaded.files)
    from forensic.parallel import Batch, scan_batch
    from forensic.report import build_report  # the scan's modules (PyTorch, MTCNN, ONNX Runtime): checks are done
    from forensic.report_outputs import ReportOutputs, write_reports
    from forensic.scan import Scanner

    try:
        scanner = Scanner(loaded, **settings)  # type: ignore[arg-type]
    except ForensicError as exc:
        _usage_error(errors, str(exc))

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=errors, transient=True, disable=quiet,
    )
    def finished(result: FileResult) -> None:
        if result.error:
            errors.print(f"error: {printable(result.error)}", markup=False, highlight=False, soft_wrap=True)
        progress.advance(task)

    batch = Batch([])
    try:
        with progress:
            task = progress.add_task("scanning", total=len(inputs))
            processes = min(workers or max(1, min(os.cpu_count() or 1, len(inputs) // FILES_PER_WORKER)), len(inputs))
            if processes > 1:
                progress.update(task, description=f"scanning in {processes} processes")
            try:
                batch = scan_batch(
                    inputs, scanner, settings, processes, on_result=finished,
                    on_file=lambda path: progress.update(task, description=f"scanning {escape(printable(path.name))}"),
                    on_frames=lambda path, n: progress.update(
                        task, description=f"scanning {escape(printable(path.name))}: {n} frames analysed"))
            except ForensicError as exc:
                _usage_error(errors, str(exc))
    except KeyboardInterrupt:  # as the workers started, or the progress bar closed
        if batch.not_scanned is None:
            batch.not_scanned = inputs[len(batch.results):]
    results, not_scanned = batch.results, batch.not_scanned
    if not_scanned is not None:
        errors.print(f"interrupted: {len(results)} of {len(inputs)} files scanned; the report is marked incomplete "
                     f"and lists the {len(not_scanned)} not scanned", markup=False, highlight=False, soft_wrap=True)

    outputs = ReportOutputs.asked_for(json_out, csv_out, html_out)
    try:
        report = build_report(results, scanner, not_scanned, shard=selection.record(results, not_scanned) if selection else None)
        console.print(_table(results))
        if part:
            console.print(f"shard {part.index}/{part.count}: {len(inputs)} of the {len(listed)} files listed",
                          markup=False, highlight=False, soft_wrap=True)
        console.print(
            f"bundle {printable(loaded.name)} ({loaded.sha256[:12]}) on {report['provider']}, threshold {scanner.threshold:g}"
            + (f" ± {scanner.uncertain_band:g} uncertain" if scanner.uncertain_band else "")
            + (f" (given; the bundle's is {loaded.threshold:g})" if scanner.threshold != loaded.threshold else ""),
            markup=False, highlight=False, soft_wrap=True,
        )
        weights = {name: scanner.runner.model_weight(name) for name in scanner.runner.sessions}
        unwritten = write_reports(console, errors, outputs, report, results, weights, json_out, csv_out, html_out)
    except KeyboardInterrupt:
        lead = ("interrupted again, as the reports were written" if not_scanned is not None else
                f"interrupted: all {len(inputs)} files were scanned, but the writing of the reports was interrupted")
        _interrupted(errors, outputs.interrupted(lead))
    if not_scanned is not None:
        raise typer.Exit(EXIT_INTERRUPTED)
    _exit(results, fail_on_fake, unwritten)


def _check_outputs(errors: Console, json_out: Optional[str], csv_out: Optional[Path], html_out: Optional[Path],
                   inputs: list[Path], bundle_files: tuple[Path, ...] = ()) -> None:
    """Refuse an output that cannot be written, that names an input or a bundle's file, or that
    another output names too: a usage error, before any work."""
    from forensic.outputs import check_outputs

    outputs = [Path(path) for path in (None if json_out == "-" else json_out, csv_out) if path]
    outputs += [html_out / "index.html"] if html_out else []
    try:
        check_outputs(outputs, inputs, bundle_files)
    except ForensicError as exc:
        _usage_error(errors, str(exc))


def _path_list_lines(errors: Console, from_list: str) -> list[str]:
    """The lines of a --from file or stdin, read in blocks: a NUL byte (which no file name holds)
    is refused as soon as it is read, so that `--from /dev/zero` ends at once, not out of memory."""
    if from_list == "-" and sys.stdin.isatty():
        _usage_error(errors, "--from - reads paths from stdin, but stdin is a terminal")
    blocks = []
    try:
        with (contextlib.nullcontext(sys.stdin.buffer) if from_list == "-" else open(from_list, "rb")) as handle:
            while block := handle.read(1 << 16):
                if b"\0" in block:
                    _usage_error(errors, f"{from_list}: the path list holds a NUL byte, which no file name can contain")
                blocks.append(block)
    except OSError as exc:
        _usage_error(errors, f"{from_list}: cannot read the path list ({exc.strerror or exc})")
    # As the file system names them: a name that is not UTF-8 still reaches its file.
    return [os.fsdecode(line) for line in b"".join(blocks).splitlines()]


def _interrupted(errors: Console, line: str) -> NoReturn:
    errors.print(printable(line), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def _exit(results: list[FileResult], fail_on_fake: bool, failed: bool) -> NoReturn:
    """3 for a fake with --fail-on-fake; else 1 when `failed` or a file is an error; else 0."""
    if fail_on_fake and any(r.verdict == "fake" for r in results):
        raise typer.Exit(EXIT_FAKE_FOUND)
    raise typer.Exit(EXIT_FILE_ERRORS if failed or any(r.verdict == "error" for r in results) else 0)


@app.command(
    epilog=(
        "Exit status: 0 merged; 1 some files are errors, the merged report is incomplete (a shard was "
        "interrupted, or missing with --allow-missing) or a report could not be written; 2 bad usage or "
        "reports that are not the shards of one scan (nothing written); 3 a fake was found, with --fail-on-fake; "
        "130 interrupted (Ctrl-C) as the outputs were written: a line names those written whole and those not."
    )
)
def merge(
    reports: list[Path] = typer.Argument(..., parser=_path, help="The JSON reports of 'forensic scan --shard I/N', one per shard, in any order."),
    json_out: Optional[str] = typer.Option(None, "--json", parser=_text_path, help="Write the merged JSON report to FILE, or to stdout with '-'."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", parser=_path, help="Write a one-row-per-file CSV summary to FILE."),
    html_out: Optional[Path] = typer.Option(None, "--html", parser=_path, help="Write a self-contained HTML report to DIR/index.html (without face crops: the JSON reports hold none)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Merge even when some of the N shards have no report; the merged report is marked incomplete."),
    fail_on_fake: bool = typer.Option(False, "--fail-on-fake", help="Exit with status 3 when any file is judged fake."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; only errors (and --json - output)."),
) -> None:
    """Join the shard reports of one scan into the report a single scan would have written."""
    from forensic.report_outputs import ReportOutputs, write_reports
    from forensic.shards import merge_reports

    console = Console(stderr=json_out == "-", quiet=quiet)
    errors = Console(stderr=True)
    _check_outputs(errors, json_out, csv_out, html_out, reports)
    try:
        merged = merge_reports(reports, allow_missing=allow_missing)
    except ForensicError as exc:
        _usage_error(errors, str(exc))
    report = merged.report
    console.print(_table(merged.results))
    console.print(f"merged {len(report['merged_from'])} shard reports: {len(report['files'])} files, bundle "
                  f"{printable(report['bundle']['name'])} ({report['bundle']['sha256'][:12]}) on {report['provider']}",
                  markup=False, highlight=False, soft_wrap=True)
    if merged.missing:
        errors.print(f"incomplete: no report for shard(s) {', '.join(map(str, merged.missing))} of "
                     f"{report['merged_from'][0]['count']}; their {merged.unaccounted} inputs are not in the report",
                     markup=False, highlight=False, soft_wrap=True)
    if report["not_scanned"]:
        errors.print(f"incomplete: {len(report['not_scanned'])} inputs were not scanned (an interrupted shard); "
                     f"the report lists them", markup=False, highlight=False, soft_wrap=True)
    weights = {model["name"]: model["weight"] for model in report["bundle"].get("models", [])}
    outputs = ReportOutputs.asked_for(json_out, csv_out, html_out)
    try:
        unwritten = write_reports(console, errors, outputs, report, merged.results, weights, json_out, csv_out, html_out)
    except KeyboardInterrupt:
        _interrupted(errors, outputs.interrupted("interrupted as the merged report was written"))
    _exit(merged.results, fail_on_fake, unwritten or not report["complete"])


def _self_test_settings(errors: Console, epsilons: str, steps: int) -> SelfTestSettings:
    from forensic.selftest import SelfTestSettings

    try:
        values = tuple(float(Fraction(part.strip())) for part in epsilons.split(",") if part.strip())
    except (ValueError, ZeroDivisionError, OverflowError):
        _usage_error(errors, f"--self-test-eps: cannot read {epsilons!r} (e.g. 1/255,2/255,4/255)")
    if not values or any(not 0 < v <= 1 for v in values):
        _usage_error(errors, "--self-test-eps: each ε must be in (0, 1]")
    return SelfTestSettings(epsilons=tuple(sorted(values)), steps=steps)


def _usage_error(errors: Console, message: str) -> NoReturn:
    errors.print(f"error: {printable(message)}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


@app.command()
def tui(
    folder: Path = typer.Argument(..., parser=_path, help="Folder of images and videos (searched recursively)."),
    bundle: Path = typer.Option(DEFAULT_BUNDLE, "--bundle", "-b", parser=_path, help="Detector bundle folder (has manifest.json)."),
    self_test: bool = typer.Option(False, "--self-test", help="Self-test every verdict (PGD), not only the files you press s on."),
    cache: Optional[Path] = typer.Option(None, "--cache", parser=_path, help="Results cache folder (default: $FORENSIC_CACHE_DIR, else $XDG_CACHE_HOME/deepfake-forensics, else ~/.cache/deepfake-forensics)."),
) -> None:
    """Triage a folder in a terminal UI: a table that fills while it scans, details per file, filters, self-tests and exports (? for keys)."""
    from forensic.tui.app import ForensicApp  # Textual is loaded only for this command

    try:
        tui_app = ForensicApp.for_folder(folder, bundle, self_test_every_file=self_test, cache_dir=cache)
    except ForensicError as exc:
        _usage_error(Console(stderr=True), str(exc))
    tui_app.run()
