"""Expected errors, and how a script reports them.

An expected error is the user's to fix: bad data, a bad checkpoint, a bad flag, an output
path that holds someone else's files. It stops the script with one line naming what is
wrong, and a non-zero exit status; a traceback is only for bugs (or ``--debug``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


class UserError(Exception):
    """Input the user must fix; the message says what and where."""


class DatasetError(UserError, ValueError):
    """Bad dataset input, reported where it was found (file, line) so that it can be fixed."""


class CheckpointError(UserError, ValueError):
    """A file that is not a checkpoint this project can load, or one that contradicts the flags."""


class OutputError(UserError):
    """An output path the program may not write: it holds files this project did not write."""


class ArgumentError(UserError, ValueError):
    """A flag out of its range, found before any work starts."""


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C

_interrupt_note = ""


def set_interrupt_note(note: str) -> None:
    """What a Ctrl-C should tell the user besides "interrupted" (a training run: the epoch
    it was at, and how to continue); "" for nothing."""
    global _interrupt_note
    _interrupt_note = note


def user_message(error: BaseException) -> str:
    """The error's own one-line message. An error raised in a DataLoader worker comes back
    wrapped with the worker's traceback ("Caught DatasetError in DataLoader worker process 0
    ... Original Traceback ..."); its last line holds the original message."""
    message = str(error)
    if "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return message


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; an expected error prints ``error: <message>`` on stderr and exits
    with status 2, a Ctrl-C prints ``interrupted ...`` and exits with status 130, unless
    ``--debug`` is among the arguments (then the traceback is shown)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        main(argv)
    except UserError as error:
        if "--debug" in args:
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        if "--debug" in args:
            raise
        print(f"interrupted {_interrupt_note}".rstrip(), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def require_positive(flag: str, value: float | None) -> None:
    """One line, before any work, for a count or rate that must be above zero."""
    if value is not None and not value > 0:
        raise ArgumentError(f"{flag} {value:g}: must be positive")


def require_unit_interval(flag: str, values: float | list[float] | None) -> None:
    """One line, before any work, for a threshold outside [0, 1]."""
    for value in [values] if isinstance(values, (int, float)) else values or []:
        if not 0 <= value <= 1:
            raise ArgumentError(f"{flag} {value:g}: must lie in [0, 1]")
