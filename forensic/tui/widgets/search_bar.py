"""Incremental search: the table narrows to file names containing the text as it is typed."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input

from forensic.tui.messages import SearchClosed


class SearchBar(Input):
    DEFAULT_CSS = """
    SearchBar { display: none; }
    SearchBar.-open { display: block; }
    """
    BINDINGS = [Binding("escape", "close(False)", "clear search", show=False)]

    def __init__(self) -> None:
        super().__init__(placeholder="search file names · enter keeps it · esc clears", compact=True)

    def open(self) -> None:
        self.add_class("-open")
        self.focus()

    def action_close(self, keep: bool) -> None:
        if not keep:
            self.value = ""
        self.remove_class("-open")
        self.post_message(SearchClosed(self.value))

    async def action_submit(self) -> None:
        self.action_close(True)
