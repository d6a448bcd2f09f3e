"""The terminal UI's app: a table of the folder's files filled by a background scan, a details
screen, filters, search, sorting, self-tests, rescans and exports. Scanning is forensic's
Scanner running in one worker thread (forensic.tui.jobs); this module only keeps the state
and draws it."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Input

from forensic.bundle import load_bundle
from forensic.display import printable
from forensic.errors import ForensicError
from forensic.inputs import collect_inputs
from forensic.scan import FileResult, Scanner
from forensic.tui.cache import default_cache_dir
from forensic.tui.export import default_export_path, export_results
from forensic.tui.jobs import ScanJob, ScanService, ScanSettings
from forensic.tui.messages import (ExportFailed, ExportFinished, FileChosen, FileFinished, FileProgress,
                                   FileRequeued, FileStarted, ScanNotice, ScannerFailed, ScannerReady,
                                   SearchClosed, SortChosen)
from forensic.tui.state import (FILTERS, SORTS, FileRecord, Throughput, verdict_counts, visible_records)
from forensic.tui.widgets.detail_screen import DetailScreen
from forensic.tui.widgets.export_dialog import ExportDialog, ExportRequest
from forensic.tui.widgets.file_table import FileTable
from forensic.tui.widgets.filter_menu import FilterMenu
from forensic.tui.widgets.help_screen import HelpScreen
from forensic.tui.widgets.scan_status import ScanStatus
from forensic.tui.widgets.search_bar import SearchBar

VIEW_REFRESH_SECONDS = 0.25  # while files stream in, reorder the table at most this often
MAIN_SCREEN_ACTIONS = frozenset({"mark", "sort", "filter", "search", "stop"})
FILE_ACTIONS = frozenset({"self_test", "rescan", "export"})  # on the main screen and the details screen


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ForensicApp(App[None]):
    TITLE = "forensic tui"
    ENABLE_COMMAND_PALETTE = False  # every action has a key; the footer needs the room at 80 columns
    # Short descriptions, so that the footer fits 80 columns; ? explains each key.
    BINDINGS = [
        Binding("space", "mark", "mark", show=False),
        Binding("o", "sort", "sort"),
        Binding("f", "filter", "filter"),
        Binding("slash", "search", "find", key_display="/"),
        Binding("s", "self_test", "test"),
        Binding("r", "rescan", "rescan"),
        Binding("e", "export", "export"),
        Binding("c", "stop", "stop"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, folder: Path, files: list[Path], settings: ScanSettings, cache_root: Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.records = {str(path): FileRecord.for_path(path, self.folder) for path in files}
        self.settings = settings
        self.cache_root = Path(cache_root)
        self.service = ScanService(settings, self.cache_root, self.post_message)
        self.sort, self.filter, self.search = SORTS[0], "all", ""
        self.provider: str | None = None
        self.failure: str | None = None
        self.throughput = Throughput()
        self.scanning: FileRecord | None = None
        self.last_export: Path | None = None
        self._scan_started = 0.0
        self._view_refresh_pending = False

    @classmethod
    def for_folder(cls, folder: Path, bundle_dir: Path, self_test_every_file: bool = False,
                   cache_dir: Path | None = None) -> ForensicApp:
        """The app for a folder, or a ForensicError saying in one line why not."""
        if not folder.is_dir():
            raise ForensicError(f"{folder}: not a folder")
        bundle = load_bundle(bundle_dir)
        files = collect_inputs([folder])
        if not files:
            raise ForensicError(f"{folder}: no images or videos in it")
        settings = ScanSettings(bundle, self_test_every_file=self_test_every_file)
        return cls(folder, files, settings, cache_dir or default_cache_dir())

    def compose(self) -> ComposeResult:
        yield FileTable(id="files")
        yield SearchBar()
        yield ScanStatus()
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.refresh_view()
        self.service.queue.add(ScanJob(record.path) for record in self.records.values())
        self.run_worker(self.service.run, thread=True, name="scan")

    def on_unmount(self) -> None:
        self.service.shutdown()

    # State.

    @property
    def table(self) -> FileTable:
        return self.query_one(FileTable)

    @property
    def scan_finished(self) -> bool:
        """Every file has a result (or an error) and nothing is waiting."""
        return all(record.finished for record in self.records.values()) and not len(self.service.queue)

    def selected_records(self) -> list[FileRecord]:
        """What s, r and e act on: the file on the details screen, else the marked files, else
        the highlighted row."""
        if isinstance(self.screen, DetailScreen):
            return [self.screen.record]
        marked = [record for record in self.records.values() if record.marked]
        if marked:
            return marked
        key = self.table.highlighted_key
        return [self.records[key]] if key else []

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        on_main = self.screen is self.screen_stack[0]
        if action in MAIN_SCREEN_ACTIONS:
            return on_main
        if action in FILE_ACTIONS:
            return on_main or isinstance(self.screen, DetailScreen)
        return True

    def refresh_view(self) -> None:
        self._view_refresh_pending = False
        if not self.is_running:
            return  # a timer or the scan thread's last message, while the app closes
        self.table.show(visible_records(self.records.values(), self.filter, self.search, self.sort))
        self.update_status()

    def _record_changed(self, record: FileRecord) -> None:
        if not self.is_running:
            return
        self.table.update(record)
        if self.scan_finished:
            self.refresh_view()  # the final order at once
        elif not self._view_refresh_pending:
            self._view_refresh_pending = True
            self.set_timer(VIEW_REFRESH_SECONDS, self.refresh_view)
        for screen in self.screen_stack:
            if isinstance(screen, DetailScreen) and screen.record is record:
                screen.show(record)
        self.update_status()

    def update_status(self) -> None:
        if not self.is_running:
            return
        records = list(self.records.values())
        finished = sum(record.finished for record in records)
        status = self.query_one(ScanStatus)
        status.show_progress(finished, len(records), self._progress_text(records, finished))
        shown = len(self.table.shown_keys)
        marked = sum(record.marked for record in records)
        bundle = self.settings.bundle
        parts = [f"sort {self.sort}", f"filter {self.filter}"] + ([f"search '{self.search}'"] if self.search else [])
        parts += [f"{shown}/{len(records)} shown"] + ([f"{marked} marked"] if marked else [])
        parts.append(bundle.name + (f" on {self.provider.replace('ExecutionProvider', '')}" if self.provider else ""))
        status.show_view(" · ".join(parts))

    def _progress_text(self, records: list[FileRecord], finished: int) -> str:
        if self.failure:
            return f"cannot scan: {self.failure}"
        if self.provider is None:
            return "loading the detector…"
        if finished == len(records) and not self.scanning:
            counts = verdict_counts(records)
            return f"{len(records)} files: " + ", ".join(f"{counts[v]} {v}" for v in FILTERS if v in counts)
        if self.service.queue.stopped and not self.scanning:
            return f"{finished}/{len(records)} · stopped: c resumes"
        parts = [f"{finished}/{len(records)}"]
        if self.throughput.rate:
            left = self.throughput.seconds_left(len(records) - finished)
            parts += [f"{self.throughput.rate:.2g} files/s", f"{format_duration(left)} left"]
        if self.scanning:
            frames = f" ({self.scanning.frames_done} frames)" if self.scanning.frames_done else ""
            parts.append(f"scanning {self.scanning.name}{frames}")
        return " · ".join(parts)

    # Messages from the scan thread.

    def on_scanner_ready(self, message: ScannerReady) -> None:
        self.provider = message.provider
        self.update_status()

    def on_scanner_failed(self, message: ScannerFailed) -> None:
        self.failure = message.reason
        self.notify(printable(message.reason), severity="error", timeout=30, markup=False)
        self.update_status()

    def on_file_started(self, message: FileStarted) -> None:
        record = self.records[str(message.path)]
        record.status, record.frames_done = "scanning", 0
        self.scanning = record
        self._scan_started = time.monotonic()
        self._record_changed(record)

    def on_file_progress(self, message: FileProgress) -> None:
        self.records[str(message.path)].frames_done = message.frames
        self.update_status()

    def on_file_finished(self, message: FileFinished) -> None:
        record = self.records[str(message.path)]
        record.result = message.result
        record.status = "error" if message.result.verdict == "error" else "cached" if message.from_cache else "done"
        self.scanning = None
        if not message.from_cache:
            self.throughput.add(time.monotonic() - self._scan_started)
        self._record_changed(record)

    def on_file_requeued(self, message: FileRequeued) -> None:
        record = self.records[str(message.path)]
        record.status = "queued"
        self.scanning = None
        self._record_changed(record)

    def on_scan_notice(self, message: ScanNotice) -> None:
        self.notify(printable(message.text), severity="warning", timeout=15, markup=False)

    # Table events.

    def on_file_chosen(self, message: FileChosen) -> None:
        self.push_screen(DetailScreen(self.records[message.key], self.settings.bundle))

    def on_sort_chosen(self, message: SortChosen) -> None:
        self.sort = message.sort
        self.refresh_view()

    # Keys.

    def action_mark(self) -> None:
        key = self.table.highlighted_key
        if key:
            record = self.records[key]
            record.marked = not record.marked
            self.table.update(record)
            self.table.action_move(1)
            self.update_status()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.refresh_view()

    def action_filter(self) -> None:
        records = list(self.records.values())
        counts = {name: sum(verdicts is None or record.verdict in verdicts for record in records)
                  for name, verdicts in FILTERS.items()}
        self.push_screen(FilterMenu(self.filter, counts), self._set_filter)

    def _set_filter(self, filter_name: str | None) -> None:
        if filter_name is not None:
            self.filter = filter_name
            self.refresh_view()

    def action_search(self) -> None:
        self.query_one(SearchBar).open()

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, SearchBar):
            self.search = event.value
            self.refresh_view()

    def on_search_closed(self, message: SearchClosed) -> None:
        self.search = message.text
        self.refresh_view()
        self.table.focus()

    def action_self_test(self) -> None:
        # A no-face or error file has no verdict to attack.
        testable = [record for record in self.selected_records() if record.verdict not in ("no-face", "error")]
        if not testable:
            self.notify("nothing to self-test: no verdict", severity="warning")
        self._queue_urgent([ScanJob(record.path, self_test=True, urgent=True) for record in testable])

    def action_rescan(self) -> None:
        self._queue_urgent([ScanJob(record.path, force=True, urgent=True) for record in self.selected_records()])

    def _queue_urgent(self, jobs: list[ScanJob]) -> None:
        self.service.queue.add(jobs)
        for job in jobs:
            record = self.records[str(job.path)]
            if record is not self.scanning:
                record.status = "queued"
                self._record_changed(record)

    def action_stop(self) -> None:
        self.service.stop_folder_scan(not self.service.queue.stopped)
        self.update_status()

    def action_export(self) -> None:
        selection = sum(record.finished for record in self.selected_records())
        finished = sum(record.finished for record in self.records.values())
        self.push_screen(ExportDialog(self.folder, selection, finished), self._export)

    def _export(self, request: ExportRequest | None) -> None:
        if request is None:
            return
        scanner = self.service.scanner
        if scanner is None:
            self.notify("the detector is still loading: export once it is ready", severity="warning")
            return
        records = self.selected_records() if request.scope == "selection" else list(self.records.values())
        results = [record.result for record in records if record.finished]
        if not results:
            self.notify("nothing scanned to export yet", severity="warning")
            return
        self.run_worker(partial(self._write_export, results, scanner, request), thread=True, name="export")

    def _write_export(self, results: list[FileResult], scanner: Scanner, request: ExportRequest) -> None:
        try:
            destination = export_results(results, scanner, request.export_format, request.destination, self.folder)
        except ForensicError as exc:
            self.post_message(ExportFailed(str(exc)))
        else:
            self.post_message(ExportFinished(destination, len(results)))

    def on_export_finished(self, message: ExportFinished) -> None:
        self.last_export = message.destination
        self.notify(printable(f"{message.files} file(s) exported to {message.destination}"), markup=False)

    def on_export_failed(self, message: ExportFailed) -> None:
        self.notify(printable(message.reason), severity="error", timeout=15, markup=False)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.cache_root, default_export_path(self.folder, "json").parent))

    async def action_quit(self) -> None:
        self.service.shutdown()  # the scan thread stops after the frames it is analysing
        self.exit()
