"""docs/audit.md's table of events lists every event the code appends, and nothing it does not.

Auditors and DPOs read the log through that table; an event added without a row (or a row left
behind for an event that is gone) fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("server", "keydelivery", "retention")
# Event names built at run time, spelled out: outcomes.py appends f"key.sms.{state}" (delivered or
# undelivered) and f"{job.kind}.sent" / f"{job.kind}.logged" (kinds email and alert; mail is
# only ever `sent`, an alert without an address is `logged`).
BUILT = {"key.sms.delivered", "key.sms.undelivered", "email.sent", "alert.sent", "alert.logged"}
EVENT = re.compile(r"^[a-z]+(\.[a-z_]+)+$")


def _constants(tree: ast.Module) -> dict[str, str]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def emitted() -> set[str]:
    """Event names passed to AuditLog.append(tx, EVENT, ...) / .record(EVENT, ...) and the wrappers
    that forward to them, as string literals or module constants (imported ones included)."""
    modules = {p: ast.parse(p.read_text()) for root in SOURCES for p in (ROOT / root).rglob("*.py")}
    constants: dict[str, str] = {}
    for tree in modules.values():
        constants.update(_constants(tree))
    events = set()
    for tree in modules.values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            candidates = []
            if isinstance(node.func, ast.Attribute):    # audit.record(EVENT, ...), audit.append(tx, EVENT, ...)
                position = {"append": 1, "record": 0, "record_soon": 0, "_audit": 0}.get(node.func.attr)
                if position is not None and len(node.args) > position:
                    candidates.append(node.args[position])
            for i, arg in enumerate(node.args[:-1]):    # asyncio.to_thread(audit.record, EVENT, ...)
                if isinstance(arg, ast.Attribute) and arg.attr == "record":
                    candidates.append(node.args[i + 1])
            for arg in candidates:
                value = arg.value if isinstance(arg, ast.Constant) else constants.get(getattr(arg, "id", ""))
                if isinstance(value, str) and EVENT.match(value):
                    events.add(value)
    return events | BUILT


def rows() -> list[str]:
    """The first cell of each row of the Events table."""
    text = (ROOT / "docs" / "audit.md").read_text()
    section = text.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def names(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z]+(?:\.[a-z_]+)+)`", cell))


def test_every_emitted_event_has_a_row_and_every_row_an_event() -> None:
    code = emitted()
    doc = {name for cell in rows() for name in names(cell)}
    assert len(code) > 50, sorted(code)   # the scan still finds the calls
    assert code - doc == set(), "events missing from docs/audit.md's table"
    assert doc - code == set(), "rows in docs/audit.md for events the code does not emit"


def test_the_incident_and_dpo_events_are_marked_in_the_table() -> None:
    from sluis.retention.incidents import DPO_EVENTS, RULES

    assert {n for cell in rows() if "**incident**" in cell for n in names(cell)} == set(RULES)
    assert {n for cell in rows() if "**DPO**" in cell for n in names(cell)} == set(DPO_EVENTS)
