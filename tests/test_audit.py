"""The tamper-evident audit log: `sluis audit verify` passes on an honest log, names the first bad
record when one was edited, deleted, reordered or inserted, and still passes after pruning
(which leaves an audit.prune record vouching for the cut)."""

from __future__ import annotations

import json
from contextlib import closing

from typing import Any

import pytest

from sluis.server.core.audit import GENESIS, canonical, record_hash
from tests.support.library import FAST, download, sluis, upload
from tests.support.pg import both_engines, raw_db  # noqa: F401  (both engines)

COLUMNS = ("ts", "event", "actor", "tenant", "delivery", "source", "detail", "prev", "hash")


@pytest.fixture
def srv(make_server):
    """A setup with a dozen audit records: tenants, users, a delivery published and collected."""
    server = make_server(FAST).standard()
    app = server.app()
    assert download(app, upload(app))
    server.close()                       # release the app's connections; the tests edit the file
    return server


def db(server) -> Any:
    """An autocommit connection to the server's state database, SQLite or PostgreSQL."""
    return raw_db(server)


def verify(server):
    return sluis(server.config, "audit", "verify")


def assert_broken_at(server, seq: int, reason: str) -> None:
    result = verify(server)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"audit log BROKEN at record #{seq}:" in result.stdout, result.stdout
    assert reason in result.stdout
    assert "records before it are intact" in result.stdout


def test_fresh_log_verifies(srv):
    with closing(db(srv)) as conn:
        count = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    assert count >= 10
    result = verify(srv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"audit log intact: {count} records, head #{head[0]} {head[1]}" in result.stdout


def test_brand_new_setup_verifies(make_server):
    server = make_server()
    result = verify(server)
    assert result.returncode == 0 and "audit log intact: 1 records" in result.stdout


def test_edited_detail_is_named(srv):
    with closing(db(srv)) as conn:
        row = conn.execute("SELECT detail FROM audit WHERE seq = 4").fetchone()
        detail = json.loads(row[0])
        detail["tampered"] = True
        conn.execute("UPDATE audit SET detail = ? WHERE seq = 4", (canonical(detail),))
    assert_broken_at(srv, 4, "content does not match its hash (edited")


def test_edited_timestamp_is_named(srv):
    with closing(db(srv)) as conn:
        conn.execute("UPDATE audit SET ts = '2001-01-01T00:00:00.000000Z' WHERE seq = 7")
    assert_broken_at(srv, 7, "edited")


def test_deleted_record_is_named(srv):
    with closing(db(srv)) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 5")
    assert_broken_at(srv, 6, "sequence jumps from 4 to 6")


def test_deleted_first_records_without_prune_record_fail(srv):
    with closing(db(srv)) as conn:
        conn.execute("DELETE FROM audit WHERE seq <= 3")
    assert_broken_at(srv, 4, "earlier records are missing and no audit.prune record accounts for them")


def test_swapped_contents_are_named(srv):
    with closing(db(srv)) as conn:
        a = dict(conn.execute("SELECT * FROM audit WHERE seq = 5").fetchone())
        b = dict(conn.execute("SELECT * FROM audit WHERE seq = 6").fetchone())
        sets = ", ".join(f"{c} = ?" for c in COLUMNS)
        conn.execute(f"UPDATE audit SET {sets} WHERE seq = 5", tuple(b[c] for c in COLUMNS))
        conn.execute(f"UPDATE audit SET {sets} WHERE seq = 6", tuple(a[c] for c in COLUMNS))
    assert_broken_at(srv, 5, "does not link to the record before it")


def test_swapped_sequence_numbers_are_named(srv):
    with closing(db(srv)) as conn:
        conn.execute("UPDATE audit SET seq = -1 WHERE seq = 8")
        conn.execute("UPDATE audit SET seq = 8 WHERE seq = 9")
        conn.execute("UPDATE audit SET seq = 9 WHERE seq = -1")
    assert_broken_at(srv, 8, "does not link")


def test_record_moved_to_the_end_is_named(srv):
    with closing(db(srv)) as conn:
        last = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        conn.execute("UPDATE audit SET seq = ? WHERE seq = 3", (last + 1,))
    assert_broken_at(srv, 4, "sequence jumps from 2 to 4")


def test_inserted_record_is_named(srv):
    """A forged record, linked to its predecessor and hashed as the old unkeyed chain did (plain
    SHA-256: the forger has no audit key), slipped in as #5."""
    with closing(db(srv)) as conn:
        last = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        for seq in range(last, 4, -1):
            conn.execute("UPDATE audit SET seq = ? WHERE seq = ?", (seq + 1, seq))
        prev = conn.execute("SELECT hash FROM audit WHERE seq = 4").fetchone()[0]
        ts = conn.execute("SELECT ts FROM audit WHERE seq = 4").fetchone()[0]
        detail = {"user": "mallory", "role": "sender", "keys": [], "password": True}
        digest = record_hash(5, ts, "user.add", "admin:root", None, None, "cli", detail, prev)
        conn.execute("INSERT INTO audit (seq, ts, event, actor, tenant, delivery, source, detail, prev, hash)"
                     " VALUES (5, ?, 'user.add', 'admin:root', NULL, NULL, 'cli', ?, ?, ?)",
                     (ts, canonical(detail), prev, digest))
    # without the audit key the forged record's own hash does not hold
    assert_broken_at(srv, 5, "content does not match its hash (edited, or rewritten without the audit key)")


def test_appended_record_with_made_up_hash_is_named(srv):
    with closing(db(srv)) as conn:
        head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        conn.execute("INSERT INTO audit (seq, ts, event, actor, tenant, delivery, source, detail, prev, hash)"
                     " VALUES (?, '2030-01-01T00:00:00.000000Z', 'delivery.remove', 'x', NULL, NULL, NULL,"
                     " '{}', ?, ?)", (head[0] + 1, head[1], "f" * 64))
    assert_broken_at(srv, head[0] + 1, "edited")


def test_invalid_json_is_named(srv):
    with closing(db(srv)) as conn:
        conn.execute("UPDATE audit SET detail = '{not json' WHERE seq = 2")
    assert_broken_at(srv, 2, "detail is not valid JSON")


# --- pruning ---------------------------------------------------------------------------------------
def test_prune_keeps_the_chain_verifiable(lib):
    server, app, clock = lib
    old = [r.seq for r in app.audit.records()]
    clock.advance(days=5 * 365 + 1)            # past audit_keep = 5y
    delivery = upload(app)                      # new records that stay
    kept_from = max(old) + 1
    report = app.janitor.run_once()
    assert report.audit_pruned == len(old)
    seqs = [r.seq for r in app.audit.records()]
    assert min(seqs) == kept_from and not set(old) & set(seqs)
    [prune] = [r for r in app.audit.records() if r.event == "audit.prune"]
    assert prune.detail["pruned_through"] == max(old) and prune.detail["count"] == len(old)
    assert prune.actor == "janitor"
    assert any(r.delivery == delivery.id for r in app.audit.records())
    assert app.audit.verify().ok
    result = verify(server)
    assert result.returncode == 0, result.stdout
    # a second janitor pass soon after prunes nothing more
    assert app.janitor.run_once().audit_pruned == 0

    # deleting the prune record leaves the cut unexplained
    with app.db.writer() as tx:
        tx.execute("DELETE FROM audit WHERE event = 'audit.prune'")
    assert_broken_at(server, kept_from, "no audit.prune record accounts for them")


def test_records_younger_than_audit_keep_are_not_pruned(lib):
    _server, app, clock = lib
    before = [r.seq for r in app.audit.records()]
    clock.advance(days=5 * 365 - 1)
    assert app.janitor.run_once().audit_pruned == 0
    assert [r.seq for r in app.audit.records()] == before


def test_prune_of_everything_continues_the_chain(lib):
    """Regression: with every record old, the prune record restarted at #1 from GENESIS."""
    server, app, clock = lib
    head_seq, head_hash = app.audit.head()
    clock.advance(days=6 * 365)
    assert app.janitor.run_once().audit_pruned == head_seq
    [only] = list(app.audit.records())
    assert only.event == "audit.prune"
    assert only.seq == head_seq + 1             # sequence numbers are never reused
    assert only.prev == head_hash != GENESIS     # still linked to what came before
    assert verify(server).returncode == 0
    app.audit.record("test.event", actor="t")
    assert app.audit.verify().ok and app.audit.head()[0] == head_seq + 2


def test_audit_never_holds_the_passphrase(lib):
    _server, app, _clock = lib
    delivery = upload(app)
    passphrase = app.outbox.passphrase(delivery.id)
    assert passphrase
    with closing(db(_server)) as conn:
        dump = "\n".join(str(tuple(r)) for r in conn.execute("SELECT * FROM audit"))
    assert passphrase not in dump and passphrase.replace("-", "") not in dump


def test_export_filters(srv):
    result = sluis(srv.config, "audit", "export", "--json", "--tenant", "gent")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records and all(r["tenant"] == "gent" for r in records)
    assert {"tenant.add", "user.add"} <= {r["event"] for r in records}
    future = sluis(srv.config, "audit", "export", "--since", "2999-01-01")
    assert future.returncode == 0 and future.stdout == ""
    bad = sluis(srv.config, "audit", "export", "--since", "yesterday")
    assert bad.returncode == 1 and "expected YYYY-MM-DD" in bad.stderr
