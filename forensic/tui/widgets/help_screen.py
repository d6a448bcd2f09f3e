"""What each key does, where results are cached and where exports go."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = (
    ("↑ ↓ PgUp PgDn", "move in the table (or click and scroll)"),
    ("enter", "details: verdict, votes, identities, timeline, faces"),
    ("space", "mark / unmark a file; s, r and e act on marked files"),
    ("o", "sort by score (most fake first), verdict or name"),
    ("f", "filter: suspicious, fake, uncertain, real, no-face, error"),
    ("/", "search names as you type; enter keeps it, esc clears it"),
    ("s", "self-test: the smallest PGD ε that flips the verdict"),
    ("r", "rescan, ignoring the cache"),
    ("e", "export JSON, HTML or CSV: marked (or this) file or all"),
    ("c", "stop the folder scan; c again resumes it"),
    ("escape", "back from details, menus and dialogs"),
    ("?", "this help"),
    ("q", "quit (finished results stay cached)"),
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll { width: 78; height: auto; max-height: 22; border: round $accent; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "dismiss(None)", "close", show=False)]

    def __init__(self, cache_dir: Path, export_dir: Path) -> None:
        super().__init__()
        self.cache_dir = cache_dir
        self.export_dir = export_dir

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold", no_wrap=True)
        keys.add_column()
        for key, meaning in KEYS:
            keys.add_row(key, meaning)
        with VerticalScroll() as scroll:
            scroll.border_title = "forensic tui: keys"
            yield Static(keys)
            yield Static(Text(f"\nResults are cached in {self.cache_dir} (--cache DIR or $FORENSIC_CACHE_DIR to "
                         f"change) by file and bundle SHA-256: reopening the folder shows them as 'cached'.\n"
                         f"Exports go to {self.export_dir} unless you give another path; "
                         f"nothing is ever written into the scanned folder."))
