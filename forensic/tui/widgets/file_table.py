"""The folder's files, one row each, in the order and selection the app gives.

Drawn line by line (Textual's line API): only the rows on screen are rendered, so a folder of
thousands of files re-sorts, filters and updates as fast as one of ten. (DataTable measures
every cell of a column again when one of its cells shrinks, which made a 5,000-row table
take seconds per update.)
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from forensic.display import VERDICT_STYLE
from forensic.tui.messages import FileChosen, SortChosen
from forensic.tui.state import SORTS, FileRecord, format_fragility, format_size, shorten

# (key, header, width, justify); the file name takes the width that is left.
COLUMNS: tuple[tuple[str, str, int | None, str], ...] = (
    ("mark", "", 1, "left"),
    ("name", "file", None, "left"),
    ("kind", "kind", 5, "left"),
    ("size", "size", 5, "right"),
    ("status", "status", 8, "left"),
    ("verdict", "verdict", 9, "left"),
    ("score", "score", 5, "right"),
    ("fragility", "fragility", 9, "left"),
)
CELL_PADDING = 1  # blank cells each side of a column
MIN_NAME_WIDTH = 12
STATUS_STYLE = {"queued": "dim", "scanning": "bold cyan", "done": "", "cached": "", "error": "bold magenta"}


def row_cells(record: FileRecord, name_width: int) -> dict[str, Text]:
    """What a file's row shows, column by column."""
    verdict, score = record.verdict, record.score
    return {
        "mark": Text("●" if record.marked else "", style="bold"),
        "name": Text(shorten(record.name, name_width)),
        "kind": Text(record.kind or "?"),
        "size": Text(format_size(record.size)),
        "status": Text(record.status, style=STATUS_STYLE[record.status]),
        "verdict": Text(verdict, style=VERDICT_STYLE[verdict]) if verdict else Text(),
        "score": Text("" if score is None else f"{score:.3f}"),
        "fragility": Text(format_fragility(record.self_test)),
    }


class FileTable(ScrollView, can_focus=True):
    """A header line and one line per file. The cursor stays on the top row (the most
    suspicious file, by default) until the user moves it; then it stays on its file when rows
    reorder."""

    COMPONENT_CLASSES = {"file-table--header", "file-table--cursor", "file-table--even-row"}
    DEFAULT_CSS = """
    FileTable {
        height: 1fr;
        overflow-x: hidden;
        background: $surface;
        & > .file-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .file-table--even-row { background: $surface-lighten-1 50%; }
        & > .file-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .file-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """
    BINDINGS = [
        Binding("enter", "choose", "open", key_display="⏎"),
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move_to(0)", "first", show=False),
        Binding("end", "move_to(-1)", "last", show=False),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._rows: list[FileRecord] = []
        self._row_of: dict[str, int] = {}
        self.cursor_row = 0
        self._user_moved = False

    @property
    def highlighted_key(self) -> str | None:
        return self._rows[self.cursor_row].key if self._rows else None

    @property
    def shown_keys(self) -> list[str]:
        return [record.key for record in self._rows]

    def show(self, records: list[FileRecord]) -> None:
        """Show these files in this order, keeping the cursor on the file it was on."""
        highlighted = self.highlighted_key
        self._rows = list(records)
        self._row_of = {record.key: row for row, record in enumerate(self._rows)}
        self.virtual_size = Size(self.scrollable_content_region.width, len(self._rows) + 1)  # + the header
        self.move_to(self._row_of.get(highlighted, self.cursor_row) if self._user_moved else 0)

    def update(self, record: FileRecord) -> None:
        if record.key in self._row_of:
            self.refresh_line(self._row_of[record.key] + 1)

    def move_to(self, row: int) -> None:
        """Put the cursor on `row` (clamped) and scroll it into view."""
        self.cursor_row = max(0, min(row, len(self._rows) - 1))
        visible_rows = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + visible_rows:
            self.scroll_to(y=self.cursor_row - visible_rows + 1, animate=False, immediate=True)
        self.refresh()

    def action_move(self, rows: int) -> None:
        self._user_moved = True
        self.move_to(self.cursor_row + rows)

    def action_page(self, pages: int) -> None:
        self.action_move(pages * max(1, self.scrollable_content_region.height - 1))

    def action_move_to(self, row: int) -> None:
        self._user_moved = True
        self.move_to(row if row >= 0 else len(self._rows) - 1)

    def action_choose(self) -> None:
        if self._rows:
            self.post_message(FileChosen(self.highlighted_key))

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            column = self._column_at(event.x)
            if column in SORTS:
                self.post_message(SortChosen(column))
            return
        row = round(self.scroll_offset.y) + event.y - 1
        if row >= len(self._rows):
            return
        if row == self.cursor_row:
            self.action_choose()  # a click on the highlighted row opens it
        else:
            self.action_move_to(row)

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self._rows) + 1)

    def _widths(self) -> dict[str, int]:
        fixed = sum(width for _, _, width, _ in COLUMNS if width)
        name = self.scrollable_content_region.width - fixed - 2 * CELL_PADDING * len(COLUMNS)
        return {key: width if width else max(MIN_NAME_WIDTH, name) for key, _, width, _ in COLUMNS}

    def _column_at(self, x: int) -> str | None:
        start = 0
        for key, width in self._widths().items():
            start += width + 2 * CELL_PADDING
            if x < start:
                return key
        return None

    def render_line(self, y: int) -> Strip:
        widths = self._widths()
        if y == 0:
            cells = {key: Text(header) for key, header, _, _ in COLUMNS}
            return self._line(cells, widths, self.get_component_rich_style("file-table--header"))
        row = round(self.scroll_offset.y) + y - 1
        if row >= len(self._rows):
            return Strip.blank(self.scrollable_content_region.width, self.rich_style)
        if row == self.cursor_row:
            style = self.get_component_rich_style("file-table--cursor")
        elif row % 2:
            style = self.get_component_rich_style("file-table--even-row")
        else:
            style = self.rich_style
        return self._line(row_cells(self._rows[row], widths["name"]), widths, style)

    def _line(self, cells: dict[str, Text], widths: dict[str, int], style: Style) -> Strip:
        line = Text(no_wrap=True, end="")
        padding = " " * CELL_PADDING
        for key, _, _, justify in COLUMNS:
            cell = cells[key].copy()
            cell.align(justify, widths[key])
            line.append(padding)
            line.append_text(cell)
            line.append(padding)
        segments = Segment.apply_style(line.render(self.app.console), style)
        return Strip(segments).crop_extend(0, self.scrollable_content_region.width, style)
