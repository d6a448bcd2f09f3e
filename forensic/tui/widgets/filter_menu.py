"""Choose which verdicts the table shows."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from forensic.tui.state import FILTERS


class FilterMenu(ModalScreen[str | None]):
    """Dismissed with the chosen filter's name, or None when cancelled."""

    DEFAULT_CSS = """
    FilterMenu { align: center middle; }
    FilterMenu OptionList { width: 36; height: auto; border: round $accent; }
    """
    BINDINGS = [Binding("escape,f", "dismiss(None)", "close", show=False)]

    def __init__(self, current: str, counts: dict[str, int]) -> None:
        super().__init__()
        self.current = current
        self.counts = counts

    def compose(self) -> ComposeResult:
        options = [Option(f"{name} ({self.counts[name]})", id=name) for name in FILTERS]
        menu = OptionList(*options)
        menu.border_title = "show"
        yield menu

    def on_mount(self) -> None:
        self.query_one(OptionList).highlighted = list(FILTERS).index(self.current)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
