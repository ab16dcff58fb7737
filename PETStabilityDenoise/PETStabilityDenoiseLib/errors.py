"""Every error the library raises on purpose, in one place, so that each layer can catch them without
importing another layer. Imports nothing but typing.
"""

from typing import Optional, Sequence


def setting(field: str, flag: Optional[str] = None) -> str:
    """How an engine message names a setting, for the Python API and ``petstab`` alike.

    Args:
        field: the config field or keyword argument, e.g. ``learning_rate``.
        flag: petstab's option, when it is not ``--`` + ``field`` with dashes.
    """
    return f"{field} (petstab {flag or '--' + field.replace('_', '-')})"


class InputError(ValueError):
    """Bad user input (a file, volume, geometry or setting); the message says how to fix it."""


class ModelError(InputError):
    """A diffusion model's files are damaged, replaced or cannot be loaded; the message says how to restore them."""


class OutputError(RuntimeError):
    """The results could not be written (a full disk, a read-only folder, ...); the destination was left as it was."""


class Cancelled(RuntimeError):
    """Raised inside an engine when the caller's ``should_stop`` returns True."""


class LossJumpError(FloatingPointError):
    """Raised inside ``fit_dip`` when the loss still jumps after ``max_loss_jump_retries`` learning-rate cuts."""


class WorkerFailed(RuntimeError):
    """The background worker stopped without a result. ``log_tail`` holds its last output lines."""

    def __init__(self, message: str, log_tail: Sequence[str] = (), kind: str = "internal") -> None:
        super().__init__(message)
        self.log_tail = tuple(log_tail)
        self.kind = kind


class RunCancelled(RuntimeError):
    """A background run was cancelled; nothing was added to the scene."""
