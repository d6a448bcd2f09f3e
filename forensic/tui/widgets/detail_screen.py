"""The details of one file, full screen (it fits 80×24 by scrolling)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from forensic.bundle import Bundle
from forensic.tui.state import FileRecord
from forensic.tui.widgets.detail_pane import DetailPane


class DetailScreen(Screen[None]):
    BINDINGS = [Binding("escape,enter", "app.pop_screen", "back")]

    def __init__(self, record: FileRecord, bundle: Bundle) -> None:
        super().__init__()
        self.record = record
        self.bundle = bundle

    def compose(self) -> ComposeResult:
        yield DetailPane(self.record, self.bundle)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(DetailPane).focus()

    def show(self, record: FileRecord) -> None:
        self.record = record
        self.query_one(DetailPane).show(record)
