"""The export's one error type, shared by its stages."""


class ExportError(Exception):
    """An export that was refused, described in one line."""
