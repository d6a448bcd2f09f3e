"""Errors that the CLI turns into one-line messages instead of tracebacks."""


class ForensicError(Exception):
    """A problem with one input or with the bundle, described in one line."""


class MediaError(ForensicError):
    """A file that cannot be read as an image or a video."""


class BundleError(ForensicError):
    """A bundle that is missing, malformed or does not match its manifest."""
