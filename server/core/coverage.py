"""Which byte ranges of a file a session has read; collection means all of them."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from ..errors import LimitReached

# Separate ranges one session may hold of one file. A client reading in order holds one, a
# multi-stream download (rclone, lftp pget) one per stream; the cap bounds memory and the cost
# of a read for a client that reads scattered single bytes of a large file.
MAX_RANGES = 4096


class Coverage:
    """A set of half-open byte ranges [start, end), kept merged and sorted; adding a range costs
    O(log n) plus a list splice, so a read on the event loop stays cheap."""

    def __init__(self, max_ranges: int = MAX_RANGES) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._max = max_ranges

    def add(self, start: int, end: int) -> None:
        """Record [start, end); raise LimitReached if it would be one separate range too many."""
        if end <= start:
            return
        first = bisect_left(self._ends, start)      # the first range ending at or after `start`
        last = bisect_right(self._starts, end)      # past the last range starting at or before `end`
        if first < last:                            # it overlaps or touches ranges first..last-1
            start, end = min(start, self._starts[first]), max(end, self._ends[last - 1])
        elif len(self._starts) >= self._max:
            raise LimitReached(f"this session has read {len(self._starts)} separate parts of the file, at most "
                               f"{self._max}; read the file in order (or read the gaps first)",
                               limit="coverage_ranges", value=len(self._starts) + 1, allowed=self._max)
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    def covers(self, size: int) -> bool:
        """True when every byte of a `size`-byte file has been read."""
        return size == 0 or (bool(self._starts) and self._starts[0] == 0 and self._ends[0] >= size)

    @property
    def total(self) -> int:
        return sum(self._ends) - sum(self._starts)

    @property
    def ranges(self) -> int:
        return len(self._starts)
