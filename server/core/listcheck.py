"""The KBI list validator: a streaming check that a file is the protocol's five-field list.

Protocol-neutral: it is fed plaintext chunks in order (`feed`), then asked for a verdict
(`finish`). Memory is bounded whatever the file size: one line buffer of at most `MAX_LINE`
bytes, and the set of national register numbers seen (one int per row, at most `max_rows`).
Problems name a line number and a field, never a value: they are shown to the sender, logged
and audited. The rules and accepted spellings are specified in docs/listpolicy.md.
"""

from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable

FIELDS = ("naam", "voornaam", "rijksregisternummer", "inburgeringscontract", "attest")
# Header spellings per field, compared after lower-casing and removing spaces, '_', '-' and '.'.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "naam": ("naam", "achternaam", "familienaam"),
    "voornaam": ("voornaam", "voornamen"),
    "rijksregisternummer": ("rijksregisternummer", "rijksregisternr", "rrn", "insz", "inszummer", "insznummer"),
    "inburgeringscontract": ("inburgeringscontract", "contract"),
    "attest": ("attest", "inburgeringsattest"),
}
_HEADER = {spelling: name for name, spellings in SPELLINGS.items() for spelling in spellings}
YES = frozenset({"j", "ja", "y", "yes", "1", "true", "waar"})
NO = frozenset({"n", "nee", "no", "0", "false", "onwaar"})
YES_NO_FIELDS = ("inburgeringscontract", "attest")
MAX_LINE = 4096          # bytes in one line, its end included; a longer line is refused
MAX_PROBLEMS = 5         # problems collected; beyond, the verdict says there are more
BOM = codecs.BOM_UTF8
_SEPARATORS = " .-/"     # allowed inside a national register number as written (85.07.30-033.28)
_NOT_NAME = re.compile(r"[\s_.-]+")


@dataclass(frozen=True)
class Problem:
    """One reason to refuse: where (line, field) and what, never the value itself."""

    line: int
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Verdict:
    """The outcome: `rows` data rows seen, the first problems, and whether more were left out."""

    rows: int
    problems: tuple[Problem, ...] = ()
    more: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line for the SFTP status, the CLI and the audit log (line numbers and fields only)."""
        if self.ok:
            return f"a valid list of {self.rows} rows"
        text = "; ".join(str(p) for p in self.problems)
        return f"not a valid list: {text}" + ("; and more problems after these" if self.more else "")


# --- the national register number ------------------------------------------------------------

def rrn_digits(text: str) -> str | None:
    """The eleven digits of a number as written (dots, dashes, spaces allowed), or None."""
    digits = "".join(c for c in text if c not in _SEPARATORS)
    return digits if len(digits) == 11 and digits.isascii() and digits.isdigit() else None


def rrn_century(digits: str) -> int | None:
    """1900 or 2000 if the check number matches that century's rule, else None."""
    base, check = int(digits[:9]), int(digits[9:])
    if 97 - base % 97 == check:
        return 1900
    if 97 - (2_000_000_000 + base) % 97 == check:
        return 2000
    return None


def rrn_problem(digits: str, today: date) -> str | None:
    """What is wrong with eleven digits as a national register number, or None if it is valid."""
    century = rrn_century(digits)
    if century is None:
        return "check number does not match (mod 97)"
    year, month, day, seq = century + int(digits[:2]), int(digits[2:4]), int(digits[4:6]), int(digits[6:9])
    if month >= 40:          # bis number, sex known
        month -= 40
    elif month >= 20:        # bis number, sex unknown
        month -= 20
    if month > 12 or day > 31:
        return "no plausible birth date (month or day out of range)"
    if month and day:
        try:
            born = date(year, month, day)
        except ValueError:
            return "no plausible birth date (no such day)"
    else:
        born = date(year, month or 1, 1)
    if born > today:
        return "no plausible birth date (in the future)"
    if not 1 <= seq <= 997:
        return "sequence number out of range (001-997)"
    return None


def make_rrn(born: date, seq: int, *, bis: int = 0) -> str:
    """A valid number for a birth date and sequence (`bis` 0, 20 or 40 is added to the month)."""
    head = f"{born.year % 100:02d}{born.month + bis:02d}{born.day:02d}{seq:03d}"
    base = int(head) + (2_000_000_000 if born.year >= 2000 else 0)
    return f"{head}{97 - base % 97:02d}"


# --- the stream ---------------------------------------------------------------------------------

@dataclass
class _Columns:
    separator: str
    index: dict[str, int] = field(default_factory=dict)


class ListCheck:
    """Fed the plaintext in order; `finish` gives the verdict. Not thread-safe (one per upload)."""

    def __init__(self, max_rows: int, today: date | None = None) -> None:
        self.max_rows = max_rows
        self.today = today or date.today()
        self._buffer = bytearray()
        self._line = 0
        self._rows = 0
        self._start = True          # a BOM may come first
        self._skipping = False      # inside an over-long line
        self._columns: _Columns | None = None
        self._seen: set[int] = set()
        self._problems: list[Problem] = []
        self._more = False
        self._stopped = False       # enough problems, or too many rows: ignore the rest

    # --- input ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._stopped or not data:
            return
        if self._start:
            self._buffer += data
            if len(self._buffer) < len(BOM) and BOM.startswith(bytes(self._buffer)):
                return
            self._start = False
            data = bytes(self._buffer[3:] if self._buffer.startswith(BOM) else self._buffer)
            self._buffer.clear()
        start = 0
        while not self._stopped:
            end = data.find(b"\n", start)
            if end < 0:
                self._hold(data[start:])
                return
            self._take(data[start:end])
            start = end + 1

    def _hold(self, rest: bytes) -> None:
        if self._skipping:
            return
        self._buffer += rest
        if len(self._buffer) >= MAX_LINE:
            self._buffer.clear()
            self._skipping = True

    def _take(self, tail: bytes) -> None:
        """A complete line (the buffered part plus `tail`)."""
        self._line += 1
        if self._skipping or len(self._buffer) + len(tail) >= MAX_LINE:
            self._buffer.clear()
            self._skipping = False
            self._problem(None, f"line longer than {MAX_LINE} bytes")
            return
        if self._buffer:
            self._buffer += tail
            raw = bytes(self._buffer)
            self._buffer.clear()
        else:
            raw = tail
        self._check_line(raw[:-1] if raw.endswith(b"\r") else raw)

    def finish(self) -> Verdict:
        """The verdict; a last line without a newline counts as a line."""
        if not self._stopped:
            if self._start and self._buffer:        # a file shorter than a BOM
                self._start = False
            if self._skipping or self._buffer:
                self._take(b"")
        if not self._stopped:
            if self._columns is None and not self._problems:
                self._problem(None, "the file is empty; expected a header line")
            elif self._rows == 0 and not self._problems:
                self._problem(None, "the list has a header but no rows")
        return Verdict(self._rows, tuple(self._problems), self._more)

    # --- checks -----------------------------------------------------------------------------
    def _problem(self, field_name: str | None, message: str) -> None:
        if len(self._problems) >= MAX_PROBLEMS:
            self._more = True
            self._stopped = True
            return
        self._problems.append(Problem(self._line, message, field_name))

    def _check_line(self, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._problem(None, "not valid UTF-8")
            return
        if self._columns is None:
            self._check_header(text)
            return
        if not text.strip(" \t" + self._columns.separator):
            self._problem(None, "empty row")
            return
        self._rows += 1
        if self._rows > self.max_rows:
            self._problem(None, f"more than {self.max_rows} rows ([policy] max_rows)")
            self._stopped = True
            return
        values = self._split(text, self._columns.separator)
        if values is None:
            return
        if len(values) != len(FIELDS):
            self._problem(None, f"{len(values)} fields, expected {len(FIELDS)}")
            return
        row = {name: values[i].strip() for name, i in self._columns.index.items()}
        for name in ("naam", "voornaam"):
            if not row[name]:
                self._problem(name, "empty")
        for name in YES_NO_FIELDS:
            if row[name].lower() not in YES | NO:
                self._problem(name, "not a yes/no value (J/N, ja/nee, 1/0, ...)")
        self._check_rrn(row["rijksregisternummer"])

    def _check_rrn(self, text: str) -> None:
        digits = rrn_digits(text)
        if digits is None:
            self._problem("rijksregisternummer", "not 11 digits")
            return
        problem = rrn_problem(digits, self.today)
        if problem:
            self._problem("rijksregisternummer", problem)
            return
        number = int(digits)
        if number in self._seen:
            self._problem("rijksregisternummer", "duplicate person (the same number on an earlier line)")
            return
        self._seen.add(number)

    def _split(self, text: str, separator: str) -> list[str] | None:
        if '"' not in text:
            return text.split(separator)
        try:
            return next(csv.reader([text], delimiter=separator, strict=True))
        except csv.Error:
            self._problem(None, "malformed quoting")
            return None

    def _check_header(self, text: str) -> None:
        if not text.strip():
            self._problem(None, "the first line is empty; expected the header")
            self._stopped = True
            return
        separator = ";" if text.count(";") >= text.count(",") else ","
        names = self._split(text, separator)
        if names is None:
            return
        columns = _Columns(separator)
        for number, name in enumerate(names, start=1):
            known = _HEADER.get(_NOT_NAME.sub("", name.strip().lower()))
            if known is None:
                self._problem(None, f"header column {number} is not one of the five fields "
                                    f"({', '.join(FIELDS)})")
            elif known in columns.index:
                self._problem(known, f"header names this field twice (column {number})")
            else:
                columns.index[known] = number - 1
        for name in FIELDS:
            if name not in columns.index:
                self._problem(name, "missing from the header")
        if self._problems:
            self._stopped = True    # rows cannot be read against a wrong header
            return
        self._columns = columns


def check_chunks(chunks: Iterable[bytes], max_rows: int, today: date | None = None) -> Verdict:
    """Run the check over `chunks` (what `sluis send --dry-run` and tests use)."""
    check = ListCheck(max_rows, today)
    for chunk in chunks:
        check.feed(chunk)
    return check.finish()


def check_file(path: Path, max_rows: int, chunk: int = 1 << 16) -> Verdict:
    """Check a file on disk, read in chunks."""
    with open(path, "rb") as handle:
        return check_chunks(iter(lambda: handle.read(chunk), b""), max_rows)
