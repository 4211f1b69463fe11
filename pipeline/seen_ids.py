"""A set of ids (strings) that costs about their UTF-8 length each, for one pass over a million captions.

A Python set of a million short ``str`` holds about 90 MB; ``extract-text`` only needs to know
whether an id was seen before (duplicates, automatic numbering), not where. The ids live as
sorted fixed-width NumPy byte strings, merged in runs: an id costs the width of the longest
(short) id, and a lookup is one binary search, which a bit per hash value (2 MiB) spares for
most ids never seen. Membership is exact: the hash bits only say "surely not". An id longer
than :data:`WIDE` bytes, or holding a NUL (NumPy's byte strings drop trailing NULs), stays in
a plain set, so one long id cannot widen every entry.
"""

from __future__ import annotations

import numpy as np

WIDE = 64  # bytes: a longer id is kept in the plain set
MERGE_EVERY = 1 << 16  # ids added before the newest ones are sorted into the runs
FILTER_BITS = 1 << 24  # one bit per hash value (Python's own str hash, cached on the string)


class SeenIds:
    """``add`` and ``in`` over strings; memory about ``len(id)`` bytes an id (see the module)."""

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype="S1")
        self._recent: set[bytes] = set()
        self._odd: set[bytes] = set()  # wide ids, or ids with a NUL
        self._filter = bytearray(FILTER_BITS // 8)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _bit(self, key: str) -> tuple[int, int]:
        h = hash(key) & (FILTER_BITS - 1)
        return h >> 3, 1 << (h & 7)

    def _holds(self, b: bytes) -> bool:
        if b in self._recent or b in self._odd:
            return True
        if len(b) > self._sorted.itemsize or b"\0" in b:  # a longer key would make NumPy widen a copy of the runs
            return False
        i = int(self._sorted.searchsorted(b))
        return i < len(self._sorted) and self._sorted[i] == b

    def __contains__(self, key: str) -> bool:
        byte, bit = self._bit(key)
        return bool(self._filter[byte] & bit) and self._holds(key.encode("utf-8", "surrogatepass"))

    def add(self, key: str) -> bool:
        """Add ``key``; False (and nothing changes) when it was there already."""
        byte, bit = self._bit(key)
        b = key.encode("utf-8", "surrogatepass")
        if self._filter[byte] & bit and self._holds(b):
            return False
        self._filter[byte] |= bit
        self._count += 1
        if len(b) > WIDE or b"\0" in b:
            self._odd.add(b)
            return True
        self._recent.add(b)
        if len(self._recent) >= MERGE_EVERY:
            self._merge()
        return True

    def _merge(self) -> None:
        recent = np.array(sorted(self._recent))  # the runs stay sorted: a stable sort merges them in linear time
        self._sorted = np.sort(np.concatenate([self._sorted, recent]), kind="stable")
        self._recent = set()
