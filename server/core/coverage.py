"""Which byte ranges of a file a session has read; collection means all of them."""

from __future__ import annotations


class Coverage:
    """A set of half-open byte ranges [start, end), kept merged and sorted."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        merged: list[tuple[int, int]] = []
        for lo, hi in self._ranges:
            if hi < start or lo > end:
                merged.append((lo, hi))
            else:
                start, end = min(lo, start), max(hi, end)
        merged.append((start, end))
        self._ranges = sorted(merged)

    def covers(self, size: int) -> bool:
        """True when every byte of a `size`-byte file has been read."""
        return size == 0 or (bool(self._ranges) and self._ranges[0][0] == 0 and self._ranges[0][1] >= size)

    @property
    def total(self) -> int:
        return sum(hi - lo for lo, hi in self._ranges)
