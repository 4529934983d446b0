"""The KBI list validator (server/core/listcheck.py): rules, streaming, bounds, and property tests."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluis.server.core.listcheck import (
    MAX_LINE, MAX_PROBLEMS, ListCheck, check_chunks, make_rrn, rrn_century, rrn_problem,
)

TODAY = date(2026, 11, 30)
HEADER = b"naam;voornaam;rijksregisternummer;inburgeringscontract;attest\n"
GOOD = HEADER + b"Janssens;Jan;85.07.30-033.28;J;N\nPeeters;An;03020101264;ja;nee\n"


def with_check(head: str) -> bytes:
    """Nine digits and the check number of the 1900 rule."""
    return f"{head}{97 - int(head) % 97:02d}".encode()


def verdict(data: bytes, max_rows: int = 1000, chunk: int | None = None):
    chunks = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return check_chunks(chunks, max_rows, TODAY)


def test_the_domain_example_and_a_good_list_pass():
    assert rrn_century("85073003328") == 1900
    assert rrn_problem("85073003328", TODAY) is None
    result = verdict(GOOD)
    assert result.ok and result.rows == 2


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbf" + GOOD,                                   # BOM
    GOOD.replace(b";", b","),                                  # comma-separated
    GOOD.replace(b"\n", b"\r\n"),                              # CRLF
    GOOD.rstrip(b"\n"),                                        # no newline at the end
    b"RRN;Naam;Voornaam;Attest;Contract\n85073003328;Janssens;Jan;0;1\n",   # other order, spellings
    b"Familie_Naam;Voor-namen;INSZ;inburgerings contract;Inburgeringsattest\nA;B;85073003328;Yes;false\n"
    .replace(b"Familie_Naam", b"familienaam"),
    HEADER + b'"Van den Berg; Jr";Jan;85073003328;J;N\n',     # a quoted separator
])
def test_accepted_forms(data):
    assert verdict(data).ok, verdict(data).summary()


@pytest.mark.parametrize("data, expected", [
    (HEADER + b"A;B;85073003329;J;N\n", "line 2, rijksregisternummer: check number"),
    (HEADER + b"A;B;8507300332;J;N\n", "line 2, rijksregisternummer: not 11 digits"),
    (HEADER + b"A;B;85073003328;J;N\nC;D;85.07.30-033.28;J;N\n", "line 3, rijksregisternummer: duplicate"),
    (HEADER + b"A;B;85073003328;J;misschien\n", "line 2, attest: not a yes/no value"),
    (HEADER + b"A;B;85073003328;J\n", "line 2: 4 fields, expected 5"),
    (HEADER + b"A;B;85073003328;J;N;x\n", "line 2: 6 fields, expected 5"),
    (HEADER + b"A;B;85073003328;J;N\n\nC;D;03020101264;J;N\n", "line 3: empty row"),
    (HEADER + b";;;;\n", "line 2: empty row"),
    (HEADER + b";B;85073003328;J;N\n", "line 2, naam: empty"),
    (HEADER.replace(b"attest", b"email") + b"A;B;85073003328;J;N\n", "line 1: header column 5 is not one"),
    (HEADER.replace(b";attest", b"") + b"A;B;85073003328;J\n", "line 1, attest: missing from the header"),
    (b"naam;naam;rrn;contract;attest\n", "line 1, naam: header names this field twice"),
    (HEADER, "the list has a header but no rows"),
    (HEADER + b"A;\xff;85073003328;J;N\n", "line 2: not valid UTF-8"),
    (HEADER + b'A;"B;85073003328;J;N\n', "line 2: malformed quoting"),
    (HEADER + b"A;B;" + with_check("851330033") + b";J;N\n", "month or day out of range"),
    (HEADER + b"A;B;" + with_check("850230033") + b";J;N\n", "no such day"),        # 30 February
    (HEADER + b"A;B;" + with_check("850730000") + b";J;N\n", "sequence number"),
    (HEADER + b"A;B;" + make_rrn(date(2030, 1, 1), 1).encode() + b";J;N\n", "in the future"),
    (HEADER + b"A;B;" + b"x" * MAX_LINE + b";J;N\n", f"line 2: line longer than {MAX_LINE} bytes"),
])
def test_each_fault_is_named_with_its_line(data, expected):
    result = verdict(data)
    assert not result.ok and expected in result.summary(), result.summary()


def test_messages_never_carry_row_content():
    secret_name, secret_first = b"Vanderzwaluwen", b"Gerlinde"
    data = HEADER + secret_name + b";" + secret_first + b";85073003329;misschien;N\n" \
        + b"Zwaluw;Gerlinde;85073003328;J;N;extra\n"
    summary = verdict(data).summary()
    assert "line 2" in summary and "line 3" in summary
    for value in (b"Vanderzwaluwen", b"Gerlinde", b"85073003329", b"misschien", b"extra"):
        assert value.decode() not in summary


def test_a_header_that_is_really_a_row_is_not_echoed():
    summary = verdict(b"Janssens;Jan;85073003328;J;N\n").summary()
    assert "Janssens" not in summary and "85073003328" not in summary
    assert "line 1: header column 1 is not one of the five fields" in summary


def test_problems_are_capped_and_the_rest_is_skipped():
    data = HEADER + b"A;B;1;J;N\n" * 50
    result = verdict(data)
    assert len(result.problems) == MAX_PROBLEMS and result.more
    assert "and more problems" in result.summary()


def test_row_bound():
    rows = b"".join(f"A;B;{make_rrn(date(1980, 1, 1), s)};J;N\n".encode() for s in range(1, 12))
    assert verdict(HEADER + rows, max_rows=11).ok
    result = verdict(HEADER + rows, max_rows=10)
    assert "line 12: more than 10 rows" in result.summary()


def test_memory_is_bounded_whatever_the_input():
    """One endless line, and a stream past the row bound: the buffer and the set stay bounded."""
    check = ListCheck(max_rows=100, today=TODAY)
    check.feed(HEADER)
    for _ in range(1000):
        check.feed(b"x" * 65536)
        assert len(check._buffer) < MAX_LINE
    check.feed(b"\n")
    rows = b"".join(f"A;B;{make_rrn(date(1980, 1, 1), s)};J;N\n".encode() for s in range(1, 300))
    check = ListCheck(max_rows=100, today=TODAY)
    check.feed(HEADER + rows)
    assert len(check._seen) <= 100
    assert not check.finish().ok


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_verdict(chunk):
    for data in (b"\xef\xbb\xbf" + GOOD, GOOD.replace(b"\n", b"\r\n"), HEADER + b"A;B;1;J;N\n\n"):
        assert verdict(data, chunk=chunk) == verdict(data)


# --- property tests ---------------------------------------------------------------------------

births = st.dates(min_value=date(1900, 1, 1), max_value=TODAY)
sequences = st.integers(min_value=1, max_value=997)
bis = st.sampled_from([0, 20, 40])


@given(births, sequences, bis)
@settings(max_examples=500, deadline=None)
def test_valid_numbers_always_pass(born, seq, offset):
    number = make_rrn(born, seq, bis=offset)
    assert rrn_problem(number, TODAY) is None
    dotted = f"{number[:2]}.{number[2:4]}.{number[4:6]}-{number[6:9]}.{number[9:]}"
    assert verdict(HEADER + f"A;B;{dotted};J;N\n".encode()).ok


@given(births, sequences, bis, st.integers(min_value=0, max_value=10), st.integers(min_value=1, max_value=9))
@settings(max_examples=1000, deadline=None)
def test_any_single_changed_digit_fails(born, seq, offset, position, delta):
    """Any single changed digit fails, with the one exception the check number cannot see: the
    second year digit changed by exactly 6 moves a number to the other century's rule (2e9 and
    6e7 are equal mod 97). Then the number reads as valid for the other century, so this test
    asserts that that, and only that, is what happened (docs/listpolicy.md says so too)."""
    number = make_rrn(born, seq, bis=offset)
    digits = list(number)
    digits[position] = str((int(digits[position]) + delta) % 10)
    changed = "".join(digits)
    assert changed != number
    if rrn_problem(changed, TODAY) is None:
        assert position == 1 and abs(int(changed[1]) - int(number[1])) == 6
        assert rrn_century(changed) != rrn_century(number)
        return
    assert not verdict(HEADER + f"A;B;{changed};J;N\n".encode()).ok


def test_the_century_blind_spot_exists():
    """The exception above is real: 2003's 03020101264 and 1909's 09020101264 both pass mod 97."""
    assert rrn_century("03020101264") == 2000 and rrn_century("09020101264") == 1900


@given(st.lists(st.tuples(births, sequences), min_size=1, max_size=30, unique=True),
       st.sampled_from([b";", b","]), st.booleans())
@settings(max_examples=100, deadline=None)
def test_generated_lists_pass_and_a_duplicate_is_found(people, sep, bom):
    lines = [HEADER.replace(b";", sep)]
    lines += [sep.join([b"N", b"V", make_rrn(b, s).encode(), b"J", b"nee"]) + b"\n" for b, s in people]
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(lines)
    assert verdict(data).ok
    assert verdict(data + lines[1]).summary().endswith(
        f"line {len(people) + 2}, rijksregisternummer: duplicate person (the same number on an earlier line)")


# --- the name check (server/core/contentgate.py) ------------------------------------------------

def _tenants():
    from sluis.server.core.records import Tenant
    rows = [("genk", "71016"), ("gent", "44021"), ("sint-truiden", "71053"), ("truiden", None), ("peer", "72030")]
    return [Tenant(id=i, name=n, nis=c, format="age", email=None, active=True, phones=()) for i, (n, c) in
            enumerate(rows, start=1)]


@pytest.mark.parametrize("name, target, named", [
    ("genk.csv", "gent", "genk"), ("71016_2026.csv", "gent", "genk"), ("lijst_GENK_2026.csv", "gent", "genk"),
    ("lijst-gent-71016.csv", "gent", "genk"), ("genk.csv.filepart", "peer", "genk"),
    ("truiden.csv", "sint-truiden", "truiden"),
    ("genk.csv", "genk", None), ("71016_2026.csv", "genk", None), ("lijst_2026.csv", "gent", None),
    ("genkske.csv", "gent", None), ("710160.csv", "gent", None), ("sint-truiden.csv", "sint-truiden", None),
    ("peer_99999.csv", "peer", None), ("gentse-lijst.csv", "genk", None),
])
def test_the_name_check_finds_another_municipality(name, target, named):
    from sluis.server.core.contentgate import named_tenant

    tenants = _tenants()
    [own] = [t for t in tenants if t.name == target]
    found = named_tenant(name, own, tenants)
    assert (found.name if found else None) == named
