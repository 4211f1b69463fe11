"""Permissions of files and folders made through ``tempfile`` (which creates them 0600 / 0700).

Why: a report or an index written via a temp name and renamed into place must end up as
readable as any file the user's umask lets ``open``/``mkdir`` make, so the team can read it.
"""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(path: str) -> None:
    """chmod ``path`` to what ``mkdir`` (0777) or ``open`` (0666) would have made under the umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())
