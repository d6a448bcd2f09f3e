"""The folder's files, one row each, in the order and selection the app gives."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widgets import DataTable

from forensic.cli import VERDICT_STYLE
from forensic.tui.state import FileRecord, format_fragility, format_size, shorten

# (key, header, width); the file name takes the width that is left.
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("mark", "", 1),
    ("name", "file", None),
    ("kind", "kind", 5),
    ("size", "size", 5),
    ("status", "status", 8),
    ("verdict", "verdict", 9),
    ("score", "score", 5),
    ("fragility", "fragility", 9),
)
STATUS_STYLE = {"queued": "dim", "scanning": "bold cyan", "done": "", "cached": "", "error": "bold magenta"}
MIN_NAME_WIDTH = 12
SCROLLBAR_WIDTH = 2


def row_cells(record: FileRecord, name_width: int) -> list:
    verdict, score = record.verdict, record.score
    return [
        Text("●", style="bold") if record.marked else "",
        shorten(record.name, name_width),
        record.kind or "?",
        Text(format_size(record.size), justify="right"),
        Text(record.status, style=STATUS_STYLE[record.status]),
        Text(verdict, style=VERDICT_STYLE[verdict]) if verdict else "",
        Text("" if score is None else f"{score:.3f}", justify="right"),
        format_fragility(record.self_test),
    ]


class FileTable(DataTable):
    """Rows keyed by file path. `show` replaces the rows only when their order changes,
    `update` redraws one row in place; the cursor stays on its file either way."""

    DEFAULT_CSS = """
    FileTable { height: 1fr; }
    """
    # DataTable's own enter binding is hidden; shown here so the footer lists it.
    BINDINGS = [Binding("enter", "select_cursor", "open", key_display="⏎")]

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: list[FileRecord] = []
        self._keys: list[str] = []
        self._name_width = 0

    @property
    def highlighted_key(self) -> str | None:
        if not self._keys or not 0 <= self.cursor_row < len(self._keys):
            return None
        return self._keys[self.cursor_row]

    @property
    def shown_keys(self) -> list[str]:
        return list(self._keys)

    def show(self, records: list[FileRecord]) -> None:
        keys = [record.key for record in records]
        width = self._fitting_name_width()
        if keys == self._keys and width == self._name_width:
            return
        highlighted = self.highlighted_key
        self._shown, self._keys = list(records), keys
        if width != self._name_width:
            self._name_width = width
            self.clear(columns=True)
            for key, header, column_width in COLUMNS:
                self.add_column(header, key=key, width=width if key == "name" else column_width)
        else:
            self.clear()
        for record in records:
            self.add_row(*row_cells(record, self._name_width), key=record.key)
        if highlighted in keys:
            self.move_cursor(row=keys.index(highlighted), animate=False)

    def update(self, record: FileRecord) -> None:
        if record.key not in self._keys:
            return
        for (column, _, _), value in zip(COLUMNS, row_cells(record, self._name_width)):
            self.update_cell(record.key, column, value)

    def _fitting_name_width(self) -> int:
        fixed = sum(width for _, _, width in COLUMNS if width)
        padding = 2 * self.cell_padding * len(COLUMNS)
        return max(MIN_NAME_WIDTH, self.size.width - fixed - padding - SCROLLBAR_WIDTH)

    def on_resize(self, event: events.Resize) -> None:
        self.show(self._shown)
