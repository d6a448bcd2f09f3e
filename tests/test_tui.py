"""forensic tui: Pilot tests that drive the app with keys on a folder the tests make, scanned by
the real detector (MTCNN, ONNX Runtime, the default bundle), and snapshots of its screens.

What the detector says of each file is not written here: `expected` asks forensic's one Scanner,
built as the app builds it, so that the tests hold whichever detector the default bundle holds,
and check that the app shows, sorts, filters and exports what that engine found."""

from __future__ import annotations

import os

import csv
import html
import json
import shutil
import threading
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from textual.app import App
from typer.testing import CliRunner

from forensic.bundle import DEFAULT_BUNDLE, load_bundle, sha256_file
from forensic.cli import app as cli_app
from forensic.errors import ForensicError
from forensic.inputs import collect_inputs
from forensic.report import file_entry, report_schema
from forensic.faces import FaceDetector
from forensic.scan import FileResult, Scanner
from forensic.selftest import SelfTestSettings
from forensic.tui.app import ForensicApp
from forensic.tui.cache import ResultCache, default_cache_dir
from forensic.tui.export import default_export_path, export_results
from forensic.tui.jobs import ScanJob, ScanQueue, ScanService, ScanSettings
from forensic.tui.messages import FileChosen, FileProgress, FileRequeued, FileStarted, ScannerReady, SortChosen
from forensic.tui.state import (FILTERS, FileRecord, Throughput, format_fragility, format_size, shorten,
                                visible_records)
from forensic.tui.widgets import face_image
from forensic.tui.widgets.detail_screen import DetailScreen
from forensic.tui.widgets.file_table import FileTable, row_cells
from forensic.tui.widgets.export_dialog import ExportDialog
from forensic.tui.widgets.timeline import ScoreTimeline

# The tests' folder: name there → trainer synth's sample. The corrupt file's name sorts first by
# name, and it has no score, so it is last by score: the two sorts differ, whatever the detector
# says of the faces.
JUNK = "aborted_download.jpg"
MEDIA = {JUNK: "corrupt.jpg", "astronaut.png": "astronaut.png", "astronaut_blended.jpg": "astronaut_blended.jpg",
         "astronaut_blended_pan.mp4": "astronaut_blended_pan.mp4", "coffee_no_face.jpg": "coffee_no_face.jpg"}
MOST_SUSPICIOUS_FIRST = ("fake", "uncertain", "real", "no-face", "error")
SIZE = (80, 24)
# textual-image 0.12 reads pixels with Pillow's deprecated getdata(); nothing for this project to change.
pytestmark = [pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(autouse=True)
def half_block_images(monkeypatch):
    # Faces are drawn with half blocks, whatever graphics the terminal running pytest has, so
    # that snapshots are the same everywhere.
    monkeypatch.setattr(face_image, "SHOWS_GRAPHICS", False)


@pytest.fixture(scope="module")
def settings() -> ScanSettings:
    # Fewer frames and a two-ε, two-step self-test keep the tests quick; CPU keeps snapshots equal everywhere.
    return ScanSettings(load_bundle(DEFAULT_BUNDLE), frames=4, device="cpu",
                        self_test=SelfTestSettings(epsilons=(1 / 255, 2 / 255), steps=2))


@pytest.fixture(scope="module")
def expected(sample_media, settings) -> dict[str, FileResult]:
    """Each file's result from forensic's Scanner, made as the app's scan thread makes it: what
    the app must show, whatever detector the default bundle holds."""
    scanner = settings.build_scanner()
    return {name: scanner.scan_file(sample_media[sample]) for name, sample in MEDIA.items()}


@pytest.fixture
def media(sample_media, tmp_path, monkeypatch) -> Path:
    """A folder of photos and clips with faces, a faceless photo and a junk file; a relative
    path, so that the paths on screen (and in snapshots) do not depend on where pytest puts
    tmp_path."""
    monkeypatch.chdir(tmp_path)
    folder = Path("media")
    folder.mkdir()
    for name, sample in MEDIA.items():
        shutil.copy(sample_media[sample], folder / name)
    return folder


def verdicts(expected: dict[str, FileResult]) -> dict[str, str]:
    return {name: result.verdict for name, result in expected.items()}


def score_cells(expected: dict[str, FileResult]) -> dict[str, str]:
    """The score column as it should read: three decimals, blank without a score."""
    return {name: "" if result.score is None else f"{result.score:.3f}" for name, result in expected.items()}


def expected_order(expected: dict[str, FileResult], sort: str) -> list[str]:
    """The order each sort promises. score: the highest first, files without one after them
    (the more suspicious verdict, then the name, breaking ties); verdict: the most suspicious
    first, the highest score first within a verdict; name: by name."""
    def key(name: str) -> tuple:
        score, rank = expected[name].score, MOST_SUSPICIOUS_FIRST.index(expected[name].verdict)
        if sort == "score":
            return score is None, -(score or 0.0), rank, name
        return (rank, -(score or 0.0), name) if sort == "verdict" else (name,)

    return sorted(expected, key=key)


def filtered(expected: dict[str, FileResult], filter_name: str) -> list[str]:
    """The files a filter keeps, by name: all, suspicious (fake and uncertain) or one verdict."""
    kept = {"all": set(MOST_SUSPICIOUS_FIRST), "suspicious": {"fake", "uncertain"}}.get(filter_name, {filter_name})
    return [name for name in sorted(expected) if expected[name].verdict in kept]


def summary(expected: dict[str, FileResult]) -> str:
    """The status line's count of verdicts once the scan is over."""
    counts = Counter(verdicts(expected).values())
    return f"{len(expected)} files: " + ", ".join(f"{counts[v]} {v}" for v in MOST_SUSPICIOUS_FIRST if counts[v])


def make_app(folder: Path, settings: ScanSettings, cache: Path) -> ForensicApp:
    return ForensicApp(folder, collect_inputs([folder]), settings, cache)


async def wait_for(pilot, condition, what: str, pauses: int = 6000) -> None:
    """Let the app run until `condition()` holds (a guard against a hang, not a timing test)."""
    for _ in range(pauses):
        if condition():
            return
        await pilot.pause(0.05)
    pytest.fail(f"gave up waiting for {what}")


@asynccontextmanager
async def scanned_app(folder: Path, settings: ScanSettings, cache: Path, notifications: bool = False):
    """The app running on `folder`, its scan finished, and its Pilot."""
    app = make_app(folder, settings, cache)
    async with app.run_test(size=SIZE, notifications=notifications) as pilot:
        await wait_for(pilot, lambda: app.scan_finished, "the scan")
        yield app, pilot


def shown_names(app: ForensicApp) -> list[str]:
    return [app.records[key].name for key in app.table.shown_keys]


def cell(app: ForensicApp, name: str, column: str) -> str:
    """What the file's row shows in `column`."""
    return row_cells(app.records[str(app.folder / name)], name_width=40)[column].plain


def screen_text(app: ForensicApp) -> str:
    """The screen's text as its SVG screenshot holds it (spaces are non-breaking there)."""
    return html.unescape(app.export_screenshot()).replace("\xa0", " ")


async def move_to(pilot, name: str) -> None:
    app = pilot.app
    target = shown_names(app).index(name)
    await pilot.press(*(["down"] * (target - app.table.cursor_row) if target > app.table.cursor_row
                        else ["up"] * (app.table.cursor_row - target)))
    assert app.records[app.table.highlighted_key].name == name


@pytest.mark.asyncio
async def test_scan_fills_the_table_while_browsing_and_a_junk_file_is_an_error_row(media, settings, tmp_path,
                                                                                   expected):
    app = make_app(media, settings, tmp_path / "cache")
    async with app.run_test(size=SIZE) as pilot:
        second = app.table.shown_keys[1]
        await pilot.press("down")  # browsing while the scan runs (key presses wait for an idle app)
        assert app.table.highlighted_key == second
        await wait_for(pilot, lambda: app.scan_finished, "the scan")
        assert {name: cell(app, name, "verdict") for name in MEDIA} == verdicts(expected)
        assert {name: cell(app, name, "score") for name in MEDIA} == score_cells(expected)
        assert {name: cell(app, name, "status") for name in MEDIA} == {
            name: "error" if name == JUNK else "done" for name in MEDIA}
        assert "cannot decode image" in app.records[str(media / JUNK)].result.error
        assert summary(expected) in screen_text(app)
        assert app.table.highlighted_key == second  # the cursor stayed on its file as rows reordered


@pytest.mark.asyncio
async def test_sorting_filtering_and_search_change_the_rows(media, settings, tmp_path, expected):
    by_name = expected_order(expected, "name")
    assert expected_order(expected, "score") != by_name  # (the junk file's name sees to it)
    async with scanned_app(media, settings, tmp_path / "cache") as (app, pilot):
        assert app.sort == "score" and shown_names(app) == expected_order(expected, "score")  # most fake first
        await pilot.press("o")
        assert app.sort == "verdict" and shown_names(app) == expected_order(expected, "verdict")
        # Verdicts follow scores (one threshold), so this order is the score order with other
        # tie-breaks; the verdict cells, read off the rows, must run from most to least suspicious.
        ranks = [MOST_SUSPICIOUS_FIRST.index(cell(app, name, "verdict")) for name in shown_names(app)]
        assert ranks == sorted(ranks)
        await pilot.press("o")
        assert app.sort == "name" and shown_names(app) == by_name

        await pilot.press("f")
        menu = screen_text(app)
        assert all(f"{name} ({len(filtered(expected, name))})" in menu for name in FILTERS)  # each filter's count
        await pilot.press("escape")
        shown = {}
        for line, filter_name in enumerate(FILTERS):  # the menu's lines, top to bottom
            await pilot.press("f", "home", *["down"] * line, "enter")
            assert app.filter == filter_name
            shown[filter_name] = shown_names(app)
        assert shown == {name: filtered(expected, name) for name in FILTERS}
        top_verdict = expected[expected_order(expected, "score")[0]].verdict
        assert 0 < len(shown[top_verdict]) < len(MEDIA)  # at least one filter both keeps and hides files
        await pilot.press("f", "home", "enter")
        assert app.filter == "all" and shown_names(app) == by_name

        await pilot.press("slash", "p", "a", "n")
        assert shown_names(app) == ["astronaut_blended_pan.mp4"]  # narrows as it is typed
        await pilot.press("enter")
        assert app.search == "pan" and app.focused is app.table
        await pilot.press("slash", "escape")
        assert app.search == "" and shown_names(app) == by_name


@pytest.mark.asyncio
async def test_details_show_the_selected_file(media, settings, tmp_path, expected):
    async with scanned_app(media, settings, tmp_path / "cache") as (app, pilot):
        await move_to(pilot, "astronaut_blended.jpg")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        assert app.screen.record.name == "astronaut_blended.jpg"
        text = screen_text(app)
        result = expected["astronaut_blended.jpg"]
        assert f" {result.verdict.upper()} " in text and f"score {result.score:.4f}" in text
        assert sha256_file(media / "astronaut_blended.jpg") in text
        assert all(model.name in text for model in settings.bundle.models)  # their votes
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen)

        await move_to(pilot, "astronaut_blended_pan.mp4")
        await pilot.press("enter")
        assert len(app.screen.query(ScoreTimeline)) == 1  # a video has a timeline
        assert len(app.screen.query(".thumbnail")) == 2  # the identity's face and its heatmap


@pytest.mark.asyncio
async def test_file_names_with_brackets_are_shown_not_parsed_as_markup(sample_media, settings, tmp_path):
    # "a[/]b.png" (folder "a[", file "]b.png") once crashed the detail screen with a MarkupError.
    folder = tmp_path / "media"
    (folder / "a[").mkdir(parents=True)
    shutil.copy(sample_media["coffee_no_face.jpg"], folder / "a[" / "]b.png")
    shutil.copy(sample_media["coffee_no_face.jpg"], folder / "talk [abc123].jpg")
    async with scanned_app(folder, settings, tmp_path / "cache") as (app, pilot):
        for name in ("a[/]b.png", "talk [abc123].jpg"):
            await move_to(pilot, name)
            await pilot.press("enter")
            assert isinstance(app.screen, DetailScreen) and name in screen_text(app)
            await pilot.press("escape")


def hold_self_tests(monkeypatch) -> threading.Event:
    """Make the scan thread's self-testing scanner wait, before each file, until the returned
    event is set (a two-step self-test of a photo is over before a key press returns)."""
    release = threading.Event()
    build_scanner = ScanSettings.build_scanner

    def build_held(settings: ScanSettings, self_test: bool = False, scanner=None):
        made = build_scanner(settings, self_test=self_test, scanner=scanner)
        if self_test:
            scan_file = made.scan_file

            def held(*args, **kwargs):
                release.wait(timeout=600)
                return scan_file(*args, **kwargs)

            made.scan_file = held
        return made

    monkeypatch.setattr(ScanSettings, "build_scanner", build_held)
    return release


@pytest.mark.asyncio
async def test_self_test_of_the_selected_file(media, settings, tmp_path, expected, monkeypatch):
    release = hold_self_tests(monkeypatch)
    async with scanned_app(media, settings, tmp_path / "cache") as (app, pilot):
        order = expected_order(expected, "score")
        await move_to(pilot, order[0])  # the top file: it would drop the furthest without its score
        record = app.records[app.table.highlighted_key]
        assert record.self_test is None and cell(app, record.name, "fragility") == ""
        try:
            await pilot.press("s")
            await wait_for(pilot, lambda: cell(app, record.name, "status") == "scanning", "the self-test's start")
            app.refresh_view()  # the reorder a timer makes while files are scanned, at once
            assert shown_names(app) == order  # it keeps its place (its last score) while it is redone
        finally:
            release.set()
        await wait_for(pilot, lambda: record.finished and record.self_test is not None, "the self-test")
        assert record.self_test["epsilons"] == [1 / 255, 2 / 255]
        assert {trial["epsilon"] for trial in record.self_test["trials"]} <= {1 / 255, 2 / 255}
        assert cell(app, record.name, "fragility") == format_fragility(record.self_test) != ""
        await pilot.press("enter")
        assert "self-test: PGD, 2 steps" in screen_text(app)
        await pilot.press("escape")
        await move_to(pilot, "coffee_no_face.jpg")
        await pilot.press("s")  # no verdict to attack: nothing is queued
        assert cell(app, "coffee_no_face.jpg", "status") == "done" and not len(app.service.queue)


@pytest.mark.asyncio
async def test_export_writes_reports_that_validate(media, settings, tmp_path, expected):
    async with scanned_app(media, settings, tmp_path / "cache") as (app, pilot):
        await move_to(pilot, "astronaut_blended.jpg")
        await pilot.press("space", "space")  # marks it and the next row
        marked = sorted(record.name for record in app.records.values() if record.marked)
        assert len(marked) == 2

        await pilot.press("e")
        assert isinstance(app.screen, ExportDialog)
        destination = app.screen.query_one("#destination")
        destination.value = str(media / "inside.json")
        await pilot.press("enter")
        assert isinstance(app.screen, ExportDialog)  # refused: never written into the folder
        assert not (media / "inside.json").exists()

        report_path = tmp_path / "out" / "marked.json"
        destination.value = str(report_path)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.last_export == report_path, "the JSON export")
        report = json.loads(report_path.read_text())
        jsonschema.validate(report, report_schema())
        name_verdict_score = lambda entry: (Path(entry["path"]).name, entry["verdict"], entry["score"])  # noqa: E731
        assert sorted(name_verdict_score(entry) for entry in report["files"]) == sorted(
            name_verdict_score(file_entry(expected[name]) | {"path": name}) for name in marked)

        await pilot.press("e", "shift+tab", "right", "enter", "shift+tab", "right", "right", "enter")  # all, CSV
        csv_path = tmp_path / "all.csv"
        app.screen.query_one("#destination").value = str(csv_path)
        await pilot.press("tab", "tab", "enter")
        await wait_for(pilot, lambda: app.last_export == csv_path, "the CSV export")
        rows = list(csv.DictReader(csv_path.open()))
        assert {Path(row["path"]).name: row["verdict"] for row in rows} == verdicts(expected)

        await pilot.press("e", "shift+tab", "shift+tab", "right", "enter")  # HTML of the selection
        html_path = tmp_path / "marked.html"
        app.screen.query_one("#destination").value = str(html_path)
        await pilot.press("tab", "tab", "enter")
        await wait_for(pilot, lambda: app.last_export == html_path, "the HTML export")
        page = html_path.read_text()
        assert page.count("<h2>") == 2 and "data:image/png;base64," in page  # faces embedded


@pytest.mark.asyncio
async def test_reopening_reuses_cached_results_and_r_rescans(media, settings, tmp_path):
    cache = tmp_path / "cache"
    async with scanned_app(media, settings, cache) as (first, _):
        entries = {record.name: file_entry(record.result) for record in first.records.values()
                   if record.status == "done"}

    async with scanned_app(media, settings, cache) as (second, pilot):
        assert {name: cell(second, name, "status") for name in MEDIA} == {
            name: "error" if name == JUNK else "cached" for name in MEDIA}
        assert second.throughput.files == 1  # only the junk file (errors are not cached) was scanned again
        assert {name: file_entry(second.records[str(media / name)].result) for name in entries} == entries
        await move_to(pilot, "astronaut_blended_pan.mp4")
        assert second.records[second.table.highlighted_key].result.crops  # thumbnails come back too
        await pilot.press("r")
        await wait_for(pilot, lambda: cell(second, "astronaut_blended_pan.mp4", "status") == "done", "the rescan")


@pytest.mark.asyncio
async def test_stop_holds_the_folder_scan_and_c_resumes_it(media, settings, tmp_path):
    app = make_app(media, settings, tmp_path / "cache")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        assert app.service.queue.stopped
        await wait_for(pilot, lambda: app.provider is not None and app.scanning is None, "the stop")
        assert not app.scan_finished and "stopped: c resumes" in screen_text(app)
        waiting = next(record for record in app.records.values() if record.status == "queued")
        await move_to(pilot, waiting.name)
        await pilot.press("enter")
        assert "queued: no result yet" in screen_text(app)
        await pilot.press("escape")
        await pilot.press("c")
        await wait_for(pilot, lambda: app.scan_finished, "the resumed scan")


@pytest.mark.asyncio
async def test_an_unwritable_cache_is_said_once_and_the_scan_goes_on(media, settings, tmp_path, expected):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache would go")
    async with scanned_app(media, settings, not_a_folder, notifications=True) as (app, pilot):
        assert {name: cell(app, name, "verdict") for name in MEDIA} == verdicts(expected)
        assert screen_text(app).count("results are not cached") == 1


def test_snapshot_main_screen(media, settings, tmp_path, snap_compare):
    app = make_app(media, settings, tmp_path / "cache")

    async def scanned(pilot):
        await wait_for(pilot, lambda: app.scan_finished, "the scan")

    assert snap_compare(app, terminal_size=SIZE, run_before=scanned)


def test_snapshot_detail_pane(media, settings, tmp_path, snap_compare):
    app = make_app(media, settings, tmp_path / "cache")

    async def details(pilot):
        await wait_for(pilot, lambda: app.scan_finished, "the scan")
        await move_to(pilot, "astronaut_blended.jpg")
        await pilot.press("enter")

    assert snap_compare(app, terminal_size=SIZE, run_before=details)


class TableOnly(App):
    """A FileTable alone, recording what it asks the app to do."""

    def __init__(self, records: list[FileRecord]) -> None:
        super().__init__()
        self.records, self.requests = records, []

    def compose(self):
        yield FileTable()

    def on_mount(self) -> None:
        self.query_one(FileTable).show(self.records)

    def on_file_chosen(self, message: FileChosen) -> None:
        self.requests.append(("open", message.key))

    def on_sort_chosen(self, message: SortChosen) -> None:
        self.requests.append(("sort", message.sort))


@pytest.mark.asyncio
async def test_file_table_scrolls_with_its_cursor_and_answers_the_mouse(tmp_path):
    records = [FileRecord(path=tmp_path / f"{i:04d}.jpg", name=f"{i:04d}.jpg", kind="image", size=i)
               for i in range(3000)]
    app = TableOnly(records)
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(FileTable)
        rows_on_screen = SIZE[1] - 1  # all but the header line
        await pilot.press("end")
        assert table.highlighted_key == records[-1].key
        assert table.scroll_offset.y == len(records) - rows_on_screen  # the last row at the bottom
        await pilot.press("pageup", "up")
        assert table.cursor_row == len(records) - 1 - rows_on_screen - 1
        table.show(list(reversed(records)))  # reordered: the cursor stays on its file
        assert table.highlighted_key == records[len(records) - 1 - rows_on_screen - 1].key
        await pilot.press("home")
        assert table.cursor_row == 0 and table.scroll_offset.y == 0
        await pilot.click(FileTable, offset=(2, 3))  # the third row
        assert table.cursor_row == 2 and not app.requests
        await pilot.click(FileTable, offset=(2, 3))
        await pilot.click(FileTable, offset=(62, 0))  # the score column's header
        assert app.requests == [("open", records[-3].key), ("sort", "score")]


# The parts without the UI.

def test_view_filters_and_sorts_records(tmp_path):
    def record(name: str, verdict: str | None, score: float | None) -> FileRecord:
        made = FileRecord(path=tmp_path / name, name=name, kind="image", size=1)
        if verdict:
            made.status = "error" if verdict == "error" else "done"
            made.result = FileResult(path=name, kind="image", sha256=None, verdict=verdict, score=score, threshold=0.5)
        return made

    records = [record("b.jpg", "real", 0.1), record("a.jpg", "fake", 0.9), record("c.jpg", None, None),
               record("d.jpg", "uncertain", 0.3), record("e.jpg", "error", None)]
    names = lambda rows: [r.name for r in rows]  # noqa: E731
    assert names(visible_records(records, sort="score")) == ["a.jpg", "d.jpg", "b.jpg", "e.jpg", "c.jpg"]
    assert names(visible_records(records, sort="name")) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert names(visible_records(records, "suspicious")) == ["a.jpg", "d.jpg"]
    assert names(visible_records(records, "error")) == ["e.jpg"]
    assert names(visible_records(records, search="B.J")) == ["b.jpg"]


def test_formats_and_throughput():
    assert [format_size(n) for n in (286, 98578, 5 * 1024 ** 3)] == ["286B", "96K", "5.0G"]
    assert shorten("folder/astronaut_blended.jpg", 12) == "…blended.jpg"
    assert format_fragility({"trials": [{"epsilon": 2 / 255}], "fragility": None}) == ">2/255"
    throughput = Throughput()
    assert throughput.rate is None
    throughput.add(2.0)
    throughput.add(2.0)
    assert throughput.rate == 0.5 and throughput.seconds_left(3) == 6.0


def test_queue_runs_requests_first_and_stop_holds_only_the_folder():
    queue = ScanQueue()
    queue.add([ScanJob(Path("a")), ScanJob(Path("b"))])
    queue.add([ScanJob(Path("b"), force=True, urgent=True)])  # replaces b's waiting job
    assert queue.take(0) == ScanJob(Path("b"), force=True, urgent=True)
    # A second request for a waiting file keeps what the first asked for: s then r, r then s.
    queue.add([ScanJob(Path("s"), self_test=True, urgent=True)])
    queue.add([ScanJob(Path("s"), force=True, urgent=True)])
    queue.add([ScanJob(Path("r"), force=True, urgent=True)])
    queue.add([ScanJob(Path("r"), self_test=True, urgent=True)])
    assert [queue.take(0), queue.take(0)] == [ScanJob(Path("s"), force=True, self_test=True, urgent=True),
                                              ScanJob(Path("r"), force=True, self_test=True, urgent=True)]
    queue.set_stopped(True)
    assert queue.take(0) is None and len(queue) == 1
    queue.add([ScanJob(Path("c"), urgent=True)])
    assert queue.take(0).path == Path("c")  # the user's request runs even when stopped
    queue.set_stopped(False)
    assert queue.take(0).path == Path("a") and queue.take(0) is None


def test_stopping_mid_file_puts_the_file_back_in_the_queue(sample_media, settings, tmp_path):
    messages = []

    def post(message):
        messages.append(message)
        if isinstance(message, FileProgress):
            service.stop_folder_scan(True)  # after the first batch of frames: the second is not analysed
        if isinstance(message, FileRequeued):
            service.shutdown()

    # 20 frames are two batches for the face detector (16 + 4): the stop lands between them.
    service = ScanService(ScanSettings(settings.bundle, frames=20, device="cpu"), tmp_path, post)
    service.queue.add([ScanJob(sample_media["astronaut_blended_pan.mp4"])])
    thread = threading.Thread(target=service.run)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert [type(m) for m in messages] == [ScannerReady, FileStarted, FileProgress, FileRequeued]
    assert messages[2].frames == 16
    assert service.queue.stopped and len(service.queue) == 1


def test_quitting_during_a_self_test_stops_it_within_a_step(sample_media, settings, tmp_path):
    # Quitting used to wait for the whole self-test (all its PGD steps at every ε): the UI was
    # gone but the prompt did not come back.
    messages = []

    def post(message):
        messages.append(message)
        if isinstance(message, FileProgress):  # an image's only batch is analysed: the self-test comes next
            service.shutdown()

    service = ScanService(ScanSettings(settings.bundle, frames=1, device="cpu"), tmp_path, post)
    service.queue.add([ScanJob(sample_media["astronaut.png"], self_test=True, urgent=True)])
    thread = threading.Thread(target=service.run)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert [type(m) for m in messages] == [ScannerReady, FileStarted, FileProgress, FileRequeued]


def test_quitting_while_a_large_file_is_hashed_stops_within_a_mebibyte(settings, tmp_path):
    messages = []

    def post(message):
        messages.append(message)
        if isinstance(message, FileStarted):  # before the cache lookup hashes the file
            service.shutdown()

    big = tmp_path / "media" / "big.mp4"
    big.parent.mkdir()
    big.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    service = ScanService(ScanSettings(settings.bundle, frames=1, device="cpu"), tmp_path / "cache", post)
    service.queue.add([ScanJob(big)])
    thread = threading.Thread(target=service.run)
    thread.start()
    thread.join(timeout=600)
    assert [type(m) for m in messages] == [ScannerReady, FileStarted, FileRequeued]


def test_cache_round_trip_and_what_invalidates_it(sample_media, settings, reexported_mtcnn_weights, tmp_path, monkeypatch):
    scanner = settings.build_scanner()
    result = scanner.scan_file(sample_media["astronaut_blended_pan.mp4"])
    # The scan keeps only each identity's most fake crop (20 frames were analysed).
    assert len(result.crops) == len(result.identities) == 1
    cache = ResultCache(tmp_path, scanner)
    cache.put(result)
    assert next((tmp_path / settings.bundle.sha256).glob("*.json")).stem == result.sha256
    cached = cache.get(sample_media["astronaut_blended_pan.mp4"])
    assert file_entry(cached) == file_entry(result)
    ((key, (crop, cams)),) = cached.crops.items()
    assert (crop == result.crops[key][0]).all() and cams.keys() == result.crops[key][1].keys()
    assert cache.get(sample_media["astronaut.png"]) is None  # another file
    assert cache.get(sample_media["astronaut_blended_pan.mp4"], self_test=(2, (1 / 255,))) is None  # no self-test
    other_settings = ResultCache(tmp_path, ScanSettings(settings.bundle, frames=5, device="cpu").build_scanner())
    assert other_settings.get(sample_media["astronaut_blended_pan.mp4"]) is None

    def with_detector(detector: FaceDetector) -> ResultCache:  # the scanner's settings, this face detector
        return ResultCache(tmp_path, Scanner(settings.bundle, device="cpu", frames=settings.frames, keep_crops=True,
                                             detector=detector))
    assert with_detector(FaceDetector(device="cpu")).get(sample_media["astronaut_blended_pan.mp4"]) is not None
    other_weights = with_detector(FaceDetector(device="cpu", weights=reexported_mtcnn_weights))
    assert other_weights.get(sample_media["astronaut_blended_pan.mp4"]) is None

    # A damaged entry is a miss (the file is scanned again), never an error row that stays.
    entry_path = next((tmp_path / settings.bundle.sha256).glob("*.json"))
    crops_path = entry_path.with_suffix(".npz")
    good_crops, good_entry = crops_path.read_bytes(), entry_path.read_bytes()
    for damaged_crops, damaged_entry in ((good_crops[:len(good_crops) // 2], good_entry),  # BadZipFile
                                         (b"", good_entry),  # EOFError
                                         (good_crops, b"[1, 2]")):  # JSON of another shape
        crops_path.write_bytes(damaged_crops)
        entry_path.write_bytes(damaged_entry)
        assert cache.get(sample_media["astronaut_blended_pan.mp4"]) is None
    cache.put(result)
    assert file_entry(cache.get(sample_media["astronaut_blended_pan.mp4"])) == file_entry(result)

    monkeypatch.setenv("FORENSIC_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("FORENSIC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "deepfake-forensics"


def test_exports_never_go_into_the_scanned_folder(media, settings, tmp_path):
    inside = media / "sub"
    inside.mkdir()
    assert default_export_path(media, "json", working_dir=inside) == tmp_path / "media-report.json"
    assert default_export_path(media, "csv", working_dir=tmp_path / "x") == tmp_path / "x" / "media-report.csv"
    (tmp_path / "media-report.json").write_text("{}")
    assert default_export_path(media, "json", working_dir=tmp_path).name == "media-report-2.json"
    with pytest.raises(ForensicError, match="inside the scanned folder"):
        export_results([], settings.build_scanner(), "json", inside / "report.json", media)


def test_an_export_hard_linked_to_a_scanned_file_is_refused(media, settings, tmp_path):
    scanned = next(p for p in sorted(media.iterdir()) if p.is_file())
    before = scanned.read_bytes()
    link = tmp_path / "report.json"
    os.link(scanned, link)
    result = FileResult(path=str(scanned), kind="image", sha256=None, verdict="error", score=None, threshold=0.5)
    with pytest.raises(ForensicError, match="is one of the inputs"):
        export_results([result], settings.build_scanner(), "json", link, tmp_path / "elsewhere")
    assert scanned.read_bytes() == before


def test_cli_tui_refuses_in_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli_app, ["tui", str(tmp_path / "missing")])
    assert missing.exit_code == 2 and missing.output.strip() == f"error: {tmp_path / 'missing'}: not a folder"
    empty = runner.invoke(cli_app, ["tui", str(tmp_path)])
    assert empty.exit_code == 2 and "no images or videos" in empty.output
    bad_bundle = runner.invoke(cli_app, ["tui", str(tmp_path), "--bundle", str(tmp_path)])
    assert bad_bundle.exit_code == 2 and "not a bundle" in bad_bundle.output
