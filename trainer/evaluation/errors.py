"""The one error `trainer eval` reports as a usage error (exit status 2)."""


class EvaluationError(Exception):
    """An evaluation that cannot be done as asked, described in one line."""
