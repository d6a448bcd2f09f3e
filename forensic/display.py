"""Showing results on a terminal, for the CLI and the TUI alike: verdict colours, and untrusted
text (file names, paths, error messages that contain them) made safe to print."""

from __future__ import annotations

# Rich styles of the verdicts.
VERDICT_STYLE = {"fake": "bold red", "real": "green", "uncertain": "bold yellow", "no-face": "yellow", "error": "bold magenta"}


def printable(text: str) -> str:
    """`text` with every character a terminal would act on or cannot show escaped, Python-style:
    control characters (ESC, so no escape sequence in a downloaded file's name can retitle the
    window, clear the screen or fake a row), newlines, bidirectional overrides that make
    'gpj.exe' look like 'exe.jpg', and the lone surrogates a non-UTF-8 name decodes to
    (bad\\xff.jpg is shown as bad\\udcff.jpg). Reports keep the real name; this is for display."""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else ascii(character)[1:-1] for character in text)
