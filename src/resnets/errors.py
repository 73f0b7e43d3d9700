"""The error type for mistakes a user can fix (bad path, wrong name, mismatched weights)."""


class UserError(ValueError):
    """A one-line, fixable mistake: the CLI prints its message and exits non-zero, with no traceback."""
