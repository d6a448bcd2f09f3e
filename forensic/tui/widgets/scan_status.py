"""Two lines under the table: the folder's progress (bar, files/s, time left, the file being
scanned) and what the table shows (sort, filter, search, marks, bundle)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from rich.text import Text
from textual.widgets import Label, ProgressBar

from forensic.display import printable


class ScanStatus(Widget):
    DEFAULT_CSS = """
    ScanStatus { height: 2; }
    ScanStatus Horizontal { height: 1; }
    ScanStatus ProgressBar { width: auto; padding-right: 1; }
    ScanStatus ProgressBar Bar { width: 20; }
    ScanStatus Label { width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    ScanStatus #view { color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ProgressBar(total=None, show_percentage=False, show_eta=False)
            yield Label("loading the detector…", id="progress")
        yield Label("", id="view")

    def show_progress(self, finished: int, total: int, text: str) -> None:
        self.query_one(ProgressBar).update(total=total, progress=finished)
        self.query_one("#progress", Label).update(Text(printable(text)))  # holds a file name: not markup

    def show_view(self, text: str) -> None:
        self.query_one("#view", Label).update(Text(printable(text)))  # holds the bundle's name
