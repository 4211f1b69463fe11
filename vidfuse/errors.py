"""Exceptions that the command line turns into one clear message and a non-zero exit.

:func:`describe_error` is the one place that says how a failure reads on the command line;
a kind of failure with its own wording (a full disk, a signal) registers a translator with
:func:`error_translator` rather than catching it in a command.
"""

from __future__ import annotations

from typing import Callable, Optional

# (message, exit status) for an exception, or None when the translator does not know it
ErrorTranslator = Callable[[BaseException], Optional[tuple[str, int]]]
_TRANSLATORS: list[ErrorTranslator] = []

USER_ERROR = 2  # bad input, config or environment: the user can fix it
INTERNAL_ERROR = 1  # anything else: a bug, reported in one line (-v shows the traceback)
INTERRUPTED = 130


class VidfuseError(Exception):
    """Base for errors caused by user input (files, configs, arguments), not by bugs."""


class ConfigError(VidfuseError):
    """A config file or override is malformed, has an unknown key, or a wrong type."""


def error_translator(translate: ErrorTranslator) -> ErrorTranslator:
    """Register ``translate``; translators registered later are asked first."""
    _TRANSLATORS.insert(0, translate)
    return translate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_error(exc: BaseException) -> tuple[str, int]:
    """How ``exc`` reads after ``vidfuse <command>: `` (one line), and the exit status."""
    for translate in _TRANSLATORS:
        found = translate(exc)
        if found is not None:
            return found
    if isinstance(exc, VidfuseError):
        return f"error: {_first_line(exc)}", USER_ERROR
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    return (f"error: {type(exc).__name__}: {_first_line(exc)} (an unexpected failure; -v shows the traceback)",
            INTERNAL_ERROR)


@error_translator
def _beam_wrapped(exc: BaseException) -> Optional[tuple[str, int]]:
    """Beam re-raises a worker's exception with the step appended; a VidfuseError stays one."""
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, VidfuseError) and isinstance(cause, VidfuseError):
        return describe_error(cause)
    return None
