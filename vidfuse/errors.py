"""Exceptions that the command line turns into one clear message and a non-zero exit.

:func:`describe_error` is the one place that says how a failure reads on the command line;
a kind of failure with its own wording (a full disk, a signal) registers a translator with
:func:`error_translator` rather than catching it in a command.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from typing import Callable, Optional

# (message, exit status) for an exception, or None when the translator does not know it
ErrorTranslator = Callable[[BaseException], Optional[tuple[str, int]]]
_TRANSLATORS: list[ErrorTranslator] = []

USER_ERROR = 2  # bad input, config or environment: the user can fix it
INTERNAL_ERROR = 1  # anything else: a bug, reported in one line (-v shows the traceback)


class VidfuseError(Exception):
    """Base for errors caused by user input (files, configs, arguments), not by bugs."""


class ConfigError(VidfuseError):
    """A config file or override is malformed, has an unknown key, or a wrong type."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``kill PID``) as an interruption, exactly like Ctrl-C."""


class FilesystemError(VidfuseError):
    """The disk refused a write: full, read-only, or not ours to write (one line, exit 2)."""


_FS_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# how libraries that do not raise OSError say it (h5py, Beam's re-raised worker errors, pyarrow)
_FS_TEXT = [(re.compile(pattern), code) for pattern, code in (
    (r"No space left on device|\[Errno 28\]|errno = 28\b", errno.ENOSPC),
    (r"Disk quota exceeded|\[Errno 122\]|errno = 122\b", errno.EDQUOT),
    (r"Read-only file system|\[Errno 30\]|errno = 30\b", errno.EROFS),
    (r"Permission denied|\[Errno 13\]|errno = 13\b", errno.EACCES),
)]
_FILENAME = re.compile(r"""(?:filename = |: )'(/[^']+)'""")
_WORKER_DIED = re.compile(r"Worker subprocess exited with return code (-?\d+)|Channel closed prematurely")
FULL_BYTES = 1 << 20  # a write that failed into a folder with less free space than this: the disk is full


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _free_bytes(folder: str) -> int | None:
    path = os.path.abspath(folder)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _where(exc: BaseException, folder: str | None) -> str:
    name = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    match = None if name else _FILENAME.search(str(exc))
    name = name or (match.group(1) if match else None)
    if name:
        name = os.fspath(name)
        return name if os.path.isdir(name) else os.path.dirname(name) or name
    return folder or "the output folder"


def _fs_code(exc: BaseException) -> int | None:
    if isinstance(exc, OSError) and exc.errno in _FS_CAUSES:
        return exc.errno
    text = str(exc)
    return next((code for pattern, code in _FS_TEXT if pattern.search(text)), None)


def worker_died(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a Beam worker process died under the job."""
    return any(_WORKER_DIED.search(str(link)) for link in _chain(exc))


def failure_as_error(exc: BaseException, folder: str | None = None) -> VidfuseError | None:
    """The one-line error for a failure of the machine rather than of the input, or None.

    - disk full, quota, read-only, permission denied: an OSError with that errno anywhere in
      the exception chain, or its text in a library's message; a write error that says
      nothing (torch.save: ``unexpected pos``) into an output folder with under 1 MiB free
      is a full disk too. The message names the folder (of the file, else ``folder``).
    - a Beam worker process that died under the job (the OOM killer, ``kill -9``).

    Why one function: the command line calls it for any error it was not given as a
    VidfuseError, so every stage says the same thing for the same cause.
    """
    for link in _chain(exc):
        code = _fs_code(link)
        if code is not None:
            where = _where(link, folder)
            hint = {errno.ENOSPC: "free space (or use another --out) and rerun",
                    errno.EDQUOT: "free space (or use another --out) and rerun",
                    errno.EROFS: "mount it writable (or use another --out) and rerun"}.get(
                code, "check its permissions (or use another --out) and rerun")
            return FilesystemError(f"{where}: {_FS_CAUSES[code]}; {hint}: the rerun cleans up what this run left")
    for link in _chain(exc):
        match = _WORKER_DIED.search(str(link))
        if match:
            how = f" (exit {match.group(1)})" if match.group(1) else ""
            return VidfuseError(f"a Beam worker process died under the job{how}: killed, or out of memory? "
                                "rerun to resume: rows already written are kept")
    if folder and isinstance(exc, (OSError, RuntimeError)):
        free = _free_bytes(folder)
        if free is not None and free < FULL_BYTES:
            return FilesystemError(f"{folder}: no space left on the device ({free} bytes free); free space "
                                   "(or use another --out) and rerun: the rerun cleans up what this run left")


def error_translator(translate: ErrorTranslator) -> ErrorTranslator:
    """Register ``translate``; translators registered later are asked first."""
    _TRANSLATORS.insert(0, translate)
    return translate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_error(exc: BaseException, folder: str | None = None) -> tuple[str, int]:
    """How ``exc`` reads after ``vidfuse <command>: `` (one line), and the exit status.

    ``folder`` is the command's output folder: a failure of the machine (disk full, read-only,
    a dead worker; :func:`failure_as_error`) is named by it when the error names no file.
    """
    for translate in _TRANSLATORS:
        found = translate(exc)
        if found is not None:
            return found
    if isinstance(exc, Exception) and not isinstance(exc, VidfuseError):
        exc = failure_as_error(exc, folder) or exc
    if isinstance(exc, VidfuseError):
        return f"error: {_first_line(exc)}", USER_ERROR
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    return (f"error: {type(exc).__name__}: {_first_line(exc)} (an unexpected failure; -v shows the traceback)",
            INTERNAL_ERROR)


@error_translator
def _beam_wrapped(exc: BaseException) -> Optional[tuple[str, int]]:
    """Beam re-raises a worker's exception with the step appended; a VidfuseError stays one."""
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, VidfuseError) and isinstance(cause, VidfuseError):
        return describe_error(cause)
    return None
