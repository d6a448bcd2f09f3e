"""Every message of the terminal UI, in one place. The scan thread posts them to the app
(posting is thread-safe); widgets post the ones that ask the app to do something."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from forensic.scan import FileResult


class ScannerReady(Message):
    """The detector is loaded; `provider` is the execution provider that runs it."""

    def __init__(self, provider: str) -> None:
        super().__init__()
        self.provider = provider


class ScannerFailed(Message):
    """The detector could not be loaded: nothing will be scanned."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class FileStarted(Message):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path


class FileProgress(Message):
    """`frames` frames of the file are analysed so far."""

    def __init__(self, path: Path, frames: int) -> None:
        super().__init__()
        self.path = path
        self.frames = frames


class FileFinished(Message):
    def __init__(self, path: Path, result: FileResult, from_cache: bool) -> None:
        super().__init__()
        self.path = path
        self.result = result
        self.from_cache = from_cache


class FileRequeued(Message):
    """The file's scan was interrupted (the folder scan was stopped) and waits again."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path


class ScanNotice(Message):
    """Something the user should know that is not about one file."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ExportFinished(Message):
    def __init__(self, destination: Path, files: int) -> None:
        super().__init__()
        self.destination = destination
        self.files = files


class ExportFailed(Message):
    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class SearchClosed(Message):
    """The search bar closed; `text` is the search that stays applied ('' for none)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class FileChosen(Message):
    """Enter (or a click) on a file's row: show its details."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


class SortChosen(Message):
    """A click on a sortable column's header."""

    def __init__(self, sort: str) -> None:
        super().__init__()
        self.sort = sort
