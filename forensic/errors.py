"""Errors that the CLI turns into one-line messages instead of tracebacks."""


class ForensicError(Exception):
    """A problem with one input or with the bundle, described in one line."""


class MediaError(ForensicError):
    """A file that cannot be read as an image or a video."""


class BundleError(ForensicError):
    """A bundle that is missing, malformed or does not match its manifest."""


def differences(ours: dict, theirs: dict) -> str:
    """The fields in which two records differ, for a one-line message: `key A vs B` for each,
    a SHA-256 cut to its first 12 hex digits (as the CLI shows them), a missing field as None."""
    return ", ".join(f"{key} {_brief(ours.get(key))} vs {_brief(theirs.get(key))}"
                     for key in sorted(set(ours) | set(theirs), key=str) if ours.get(key) != theirs.get(key))


def _brief(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"{value[:12]}…"
    return repr(value)
