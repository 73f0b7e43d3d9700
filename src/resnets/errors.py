"""The error type for mistakes a user can fix (bad path, wrong name, mismatched weights)."""


class UserError(ValueError):
    """A one-line, fixable mistake: the CLI prints its message and exits non-zero, with no traceback."""

#: Set by ``resnets train --nproc`` for its ranks: the file where the first rank to fail with a UserError writes
#: its one line, which the launcher prints once (instead of every rank, and torchrun's report after them).
ERROR_FILE_ENV = "RESNETS_ERROR_FILE"
