"""Unit tests of the core's small pieces: path normalisation, names, reorder window, coverage."""

from __future__ import annotations

import pytest

from sluis.server.core.coverage import Coverage
from sluis.server.core.names import check_name, staged_base
from sluis.server.core.window import MemoryBudget, ReorderWindow
from sluis.server.errors import Busy, InvalidPath, UploadRejected
from sluis.server.sftp.paths import join_path, split_path


@pytest.mark.parametrize("raw, parts", [
    (b"/", ()), (b"", ()), (b".", ()), (b"/genk/x.csv", ("genk", "x.csv")), (b"genk//x", ("genk", "x")),
    (b"/genk/./x", ("genk", "x")), (b"/genk/../gent", ("gent",)), (b"/a/b/../../c", ("c",)),
    (b"%2F..%2Fetc", ("%2F..%2Fetc",)),
])
def test_split_path_normalises(raw, parts):
    assert split_path(raw) == parts


@pytest.mark.parametrize("raw, message", [
    (b"/..", "'..' would leave"), (b"../gent", "'..' would leave"), (b"/genk/../../x", "'..' would leave"),
    (b"//etc/passwd", "'//'"), (b"/genk/a\x00b", "control"), (b"/genk/a\nb", "control"),
    (b"/genk\\..\\gent", "'\\\\'"), (b"/\xff\xfe", "UTF-8"), (b"/" + b"a" * 1100, "longer than"),
])
def test_split_path_refuses(raw, message):
    with pytest.raises(InvalidPath, match=message):
        split_path(raw)


def test_join_path():
    assert join_path(("genk", "x.csv")) == b"/genk/x.csv" and join_path(()) == b"/"


def test_names():
    assert check_name("lijst genk 2026.csv") == "lijst genk 2026.csv"
    assert check_name("Cafe\u0301.csv") == "Caf\u00e9.csv"  # NFC
    for bad in ("", ".", "..", ".hidden", "a/b", "a\\b", "a\tb", "x" * 201, "a\u202eb"):
        with pytest.raises(InvalidPath):
            check_name(bad)
    assert staged_base("lijst.csv.filepart") == "lijst.csv"
    assert staged_base("lijst.csv") is None and staged_base(".filepart") is None


def collect(window_size=100, budget=1000, max_size=10_000):
    out: list[bytes] = []
    budget_obj = MemoryBudget(budget)
    window = ReorderWindow(out.append, window=window_size, budget=budget_obj, max_size=max_size)
    return window, out, budget_obj


def test_window_in_order_goes_straight_through():
    window, out, budget = collect()
    window.write(0, b"abc")
    window.write(3, b"def")
    assert out == [b"abc", b"def"] and window.held == 0 and budget.used == 0
    assert window.finish() == 6


def test_window_reorders_and_releases_memory():
    window, out, budget = collect()
    window.write(6, b"ghi")
    window.write(3, b"def")
    assert out == [] and window.held == 6 and budget.used == 6
    window.write(0, b"abc")
    assert b"".join(out) == b"abcdefghi" and window.held == 0 and budget.used == 0


def test_window_refuses_behind_and_too_far_ahead():
    window, out, _ = collect(window_size=10)
    window.write(0, b"abcd")
    with pytest.raises(UploadRejected, match="behind data already encrypted"):
        window.write(2, b"zz")
    with pytest.raises(UploadRejected, match="ahead of the stream"):
        window.write(20, b"x")
    window.write(8, b"ij")  # within the window
    assert window.held == 2


def test_window_gap_and_limits():
    window, _, budget = collect()
    window.write(5, b"x")
    with pytest.raises(UploadRejected, match="gap: no data was written at offset 0"):
        window.finish()
    assert budget.used == 0
    window, _, _ = collect(max_size=10)
    with pytest.raises(UploadRejected, match="larger than"):
        window.write(8, b"abc")


def test_window_shared_budget():
    window, _, budget = collect(window_size=100, budget=5)
    with pytest.raises(Busy):
        window.write(10, b"123456")
    assert budget.used == 0


def test_coverage():
    cov = Coverage()
    assert not cov.covers(10)
    cov.add(5, 10)
    cov.add(0, 3)
    assert not cov.covers(10) and cov.total == 8
    cov.add(2, 6)
    assert cov.covers(10) and cov.total == 10
    assert Coverage().covers(0)


def test_sender_share_of_the_reorder_budget():
    """A sender's share (limit_name) refuses first with LimitReached; the process's budget with
    Busy; memory given back frees both."""
    from sluis.server.errors import Busy, LimitReached

    total = MemoryBudget(100)
    one, other = MemoryBudget(60, total, limit_name="sender_window"), MemoryBudget(60, total, limit_name="sender_window")
    one.take(60)
    with pytest.raises(LimitReached, match="sender_window") as refused:
        one.take(1)
    assert (refused.value.limit, refused.value.value, refused.value.allowed) == ("sender_window", 61, 60)
    other.take(40)
    with pytest.raises(Busy, match="exhausted") as busy:
        other.take(1)
    assert not isinstance(busy.value, LimitReached)
    assert (total.used, one.used, other.used) == (100, 60, 40)
    one.give(60)
    other.take(20)
    assert (total.used, one.used, other.used) == (60, 0, 60)
