"""Every admin change is one transaction with its audit record: when the record cannot be written
the change is not made either (a trigger fails the audit insert, as a full disk would), and once
it can, change and record land together. Through the CLI, on both engines."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import pytest

from tests.support.library import sluis
from tests.support.pg import both_engines  # noqa: F401  (these tests run on both engines)
from tests.test_audit_failures import db, fail_audit, heal


def _one(srv: Any, sql: str) -> Any:
    with closing(db(srv)) as conn:
        return conn.execute(sql).fetchone()


CHANGES = [
    ("user.add", ["user", "add", "clerk2", "--role", "recipient", "--tenant", "genk", "--key", "{pub}",
                  "--email", "c@genk.be", "--function", "baliemedewerker"],
     "SELECT email, function FROM users WHERE name = 'clerk2'", ("c@genk.be", "baliemedewerker")),
    ("protocol.register", ["tenant", "protocol", "gent", "--signed", "2024-01-01", "--effective", "2024-02-01",
                           "--reference", "BV-9"],
     "SELECT signed, reference FROM protocols WHERE reference = 'BV-9'", ("2024-01-01", "BV-9")),
    ("protocol.notice", ["tenant", "protocol", "genk", "--notice", "2024-03-01"],
     "SELECT notice, ends FROM protocols WHERE notice IS NOT NULL", ("2024-03-01", "2025-03-01")),
    ("policy.allow", ["delivery", "allow", "genk", "--reason", "tweede lijst"],
     "SELECT granted_by IS NOT NULL, reason FROM allowances", (True, "tweede lijst")),
]


@pytest.mark.parametrize("event,argv,check,expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_an_admin_change_is_made_only_with_its_record(lib, event, argv, check, expected):
    srv, app, _clock = lib
    argv = [a.format(pub=srv.accounts["agency"].pub) for a in argv]
    before, _ = app.audit.head()
    fail_audit(srv, event)
    refused = sluis(srv.config, *argv, env=srv.env)
    assert refused.returncode != 0, refused.stdout
    assert _one(srv, check) is None, f"{event}: the change was made without its record"
    assert event not in [r.event for r in app.audit.records() if r.seq > before]
    heal(srv)
    done = sluis(srv.config, *argv, env=srv.env)
    assert done.returncode == 0, done.stderr
    assert tuple(_one(srv, check)) == tuple(expected)
    [record] = [r for r in app.audit.records() if r.event == event and r.seq > before]
    assert record.source and record.source.startswith("cli")
    if event == "user.add":
        assert record.detail["email"] is True and app.directory.user("clerk2").email == "c@genk.be"
