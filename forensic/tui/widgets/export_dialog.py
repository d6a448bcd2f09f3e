"""Ask what to export (format, which files) and where to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet

from forensic.tui.export import EXPORT_FORMATS, default_export_path, is_inside

Scope = Literal["selection", "all"]


@dataclass(frozen=True)
class ExportRequest:
    export_format: str
    scope: Scope
    destination: Path


class ExportDialog(ModalScreen[ExportRequest | None]):
    """Dismissed with what to export, or None when cancelled."""

    DEFAULT_CSS = """
    ExportDialog { align: center middle; }
    ExportDialog > Vertical { width: 76; height: auto; border: round $accent; padding: 0 1; }
    ExportDialog RadioSet { layout: horizontal; width: 100%; border: none; }
    ExportDialog Input { margin-bottom: 1; }
    ExportDialog #problem { color: $error; }
    ExportDialog Horizontal { height: auto; align-horizontal: right; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel", show=False)]

    def __init__(self, folder: Path, selection_files: int, all_files: int) -> None:
        super().__init__()
        self.folder = folder
        self.selection_files = selection_files
        self.all_files = all_files

    def compose(self) -> ComposeResult:
        with Vertical() as dialog:
            dialog.border_title = "export a report"
            yield Label("format")
            with RadioSet(id="format"):
                for number, export_format in enumerate(EXPORT_FORMATS):
                    yield RadioButton(export_format.upper(), value=number == 0, id=export_format)
            yield Label("files (only scanned ones are exported)")
            with RadioSet(id="scope"):
                yield RadioButton(f"selection ({self.selection_files} scanned)", value=True, id="selection")
                yield RadioButton(f"all ({self.all_files} scanned)", id="all")
            yield Label("to (enter exports; never inside the scanned folder)")
            yield Input(str(default_export_path(self.folder, EXPORT_FORMATS[0])), id="destination", compact=True)
            yield Label("", id="problem")
            with Horizontal():
                yield Button("export", variant="primary", id="export")
                yield Button("cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @property
    def export_format(self) -> str:
        return self.query_one("#format", RadioSet).pressed_button.id

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        if event.radio_set.id != "format":
            return
        destination = self.query_one(Input)
        old = Path(destination.value)
        # Follow the format while the path is still a default one.
        if old.suffix.lstrip(".") in EXPORT_FORMATS and old.stem.startswith(f"{self.folder.resolve().name}-report"):
            destination.value = str(default_export_path(self.folder, self.export_format))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export":
            self.submit()
        else:
            self.dismiss(None)

    def submit(self) -> None:
        text = self.query_one(Input).value.strip()
        problem = self.query_one("#problem", Label)
        if not text:
            problem.update("give a file to write the report to")
            return
        destination = Path(text).expanduser()
        if is_inside(destination, self.folder):
            problem.update("that is inside the scanned folder, which is never written to")
            return
        scope = self.query_one("#scope", RadioSet).pressed_button.id
        self.dismiss(ExportRequest(self.export_format, scope, destination))
