"""The PostgreSQL store: psycopg 3 with a connection pool, synchronous (the core runs in threads).

Implements `store.Store` on the SQL the repositories write for both engines: `?` and `:name`
placeholders become `%s` and `%(name)s` (a literal `%` is escaped), rows read by name and by
position, IntegrityError becomes `Conflict`. Every write is an explicit transaction
(`conn.transaction()`); pooled connections run in autocommit mode only so that reads outside a
writer need no transaction of their own. Locks: `writer(tenant=id)` takes the tenant's row
(SELECT … FOR UPDATE), `lock_audit` a transaction advisory lock, `migrate` another, `try_lock`
a session advisory lock held on a connection of its own; `notify`/`listen` are NOTIFY/LISTEN.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import threading
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg import sql as pgsql
from psycopg_pool import ConnectionPool

from .schema import EXPECTED_TABLES, POSTGRESQL, pending
from .store import Conflict, check_read

log = logging.getLogger("sluis.store")

MIGRATE_LOCK = "sluis:migrate"
AUDIT_LOCK = "sluis:audit"
CONNECT_TIMEOUT = 10.0          # seconds to connect
POOL_WAIT = 30.0                # seconds a thread waits for a pooled connection
LISTEN_POLL = 1.0               # seconds between checks that a listener should stop
CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,40}")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


# --- SQL and rows -----------------------------------------------------------------------------

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|\?|:([A-Za-z_]\w*)|%")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """`?` → `%s`, `:name` → `%(name)s`, `%` → `%%`; quoted literals and `::` casts untouched."""
    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        if token[0] in "'\"":
            return token.replace("%", "%%")    # psycopg reads `%` everywhere, literals included
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if match.group(1):
            return f"%({match.group(1)})s"
        return token
    return _TOKEN.sub(swap, sql)


class PgRow(tuple):
    """A result row readable by position and by column name, as sqlite3.Row is (`dict(row)` too)."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise IndexError(f"no column named {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    return type("PgRow", (PgRow,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
    names = tuple(column.name for column in cursor.description or ())
    cls = _row_class(names)
    return lambda values: cls(values)


class Result:
    """A statement's rows, fetched whole (the connection goes back to the pool at once)."""

    def __init__(self, rows: list[PgRow], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> PgRow | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[PgRow]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[PgRow]:
        return iter(self.fetchall())


def _run(conn: psycopg.Connection[Any], sql: str, params: Any) -> Result:
    try:   # without parameters psycopg sends the text as it is: nothing to translate
        cur = conn.execute(translate(sql), params) if params else conn.execute(sql)
    except psycopg.errors.IntegrityError as exc:
        raise Conflict(str(exc).strip()) from exc
    rows = cur.fetchall() if cur.description is not None else []
    return Result(rows, cur.rowcount)


# --- transactions -----------------------------------------------------------------------------

class PgTx:
    """An open write transaction on one pooled connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.hooks: list[Callable[[], None]] = []
        self.channels: list[str] = []
        self._audit_locked = False

    def execute(self, sql: str, params: Any = ()) -> Result:
        return _run(self.conn, sql, params)

    def lock_audit(self) -> None:
        """One audit appender at a time until commit: the chain's head is read, then extended."""
        if not self._audit_locked:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(AUDIT_LOCK),))
            self._audit_locked = True

    def after_commit(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def notify(self, channel: str) -> None:
        if not CHANNEL.fullmatch(channel):
            raise ValueError(f"channel {channel!r}: expected a lower-case identifier")
        if channel not in self.channels:
            self.channels.append(channel)


class PostgresStore:
    """The state database on PostgreSQL, shared by every sluis process that names it."""

    dialect = POSTGRESQL

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        # one plain connection first: its error names the cause (the pool's only says it timed out)
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT)).close()
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=POOL_WAIT, open=False, name="sluis",
            kwargs={"autocommit": True, "row_factory": _row_factory}, configure=self._configure)
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        self._stop = threading.Event()
        self._listeners: list[threading.Thread] = []
        self._channels: set[str] = set()
        self._local = threading.local()      # the thread's open writer, if any

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET TIME ZONE 'UTC'")

    # --- writes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, *, tenant: int | None = None, exclusive: bool = False) -> Iterator[PgTx]:
        """A write transaction (READ COMMITTED); with `tenant`, that tenant's row is locked first,
        so check-then-act on one tenant (publish, the yearly limit) is serial across processes.
        `exclusive` locks the tenants table against every row lock (EXCLUSIVE mode still lets
        plain reads through): it waits for tenant-locked writers and holds new ones off."""
        if getattr(self._local, "tx", None) is not None:
            raise RuntimeError("a writer inside a writer: pass the open transaction down instead")
        with self._pool.connection() as conn:
            tx = PgTx(conn)
            self._local.tx = tx
            try:
                with conn.transaction():
                    if exclusive:
                        conn.execute("LOCK TABLE tenants IN EXCLUSIVE MODE")
                    if tenant is not None:
                        conn.execute("SELECT id FROM tenants WHERE id = %s FOR UPDATE", (tenant,))
                    yield tx
                    for channel in tx.channels:      # delivered by PostgreSQL at commit, not before
                        conn.execute("SELECT pg_notify(%s, '')", (channel,))
            finally:
                self._local.tx = None
        for hook in tx.hooks:
            hook()

    # --- reads (autocommit, one statement) -------------------------------------------------------
    def execute(self, sql: str, params: Any = ()) -> Result:
        """A read in a statement of its own (autocommit); writes go through `writer()`. In a
        thread with an open writer, the read runs in it, as on SQLite (one connection a thread):
        it sees the transaction's own writes and takes no second connection from the pool."""
        tx: PgTx | None = getattr(self._local, "tx", None)
        if tx is not None:
            return tx.execute(check_read(sql), params)
        with self._pool.connection() as conn:
            return _run(conn, check_read(sql), params)

    def query(self, sql: str, params: Any = ()) -> list[PgRow]:
        return self.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Any = ()) -> PgRow | None:
        return self.execute(sql, params).fetchone()

    # --- schema ---------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations this database has not seen, under a transaction advisory lock:
        processes starting at once wait for the first, which migrates; the rest find nothing to do.
        The names of those this call applied."""
        applied: list[str] = []
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(MIGRATE_LOCK),))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY,"
                         " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            version = int(row[0]) if row else 0
            for migration in pending(version, "the PostgreSQL database"):
                applied.append(migration.apply(conn.execute, POSTGRESQL, psycopg.Error))
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (migration.number, migration.name))
                log.info("database: applied migration %s", applied[-1])
        tables = {r[0] for r in self.query("SELECT table_name FROM information_schema.tables"
                                           " WHERE table_schema = current_schema()")}
        missing = set(EXPECTED_TABLES) - tables
        if missing:
            raise RuntimeError(f"schema is missing tables {sorted(missing)} after migration")
        return applied

    def version(self) -> int:
        """How many migrations this database has seen (0: a brand-new database)."""
        exists = self.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if exists is None or not exists[0]:
            return 0
        row = self.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(row[0]) if row else 0

    # --- coordination between processes ------------------------------------------------------------
    @contextlib.contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """A session advisory lock, held on a pooled connection for the block; a holder that dies
        loses its connection and so its lock."""
        key = lock_key("sluis:" + name)
        with self._pool.connection() as conn:
            got = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
            try:
                yield got
            finally:
                if got:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """LISTEN on a connection of its own, in a daemon thread; reconnects after a failure."""
        if not CHANNEL.fullmatch(channel):
            raise ValueError(f"channel {channel!r}: expected a lower-case identifier")
        ready = threading.Event()
        thread = threading.Thread(target=self._listen, args=(channel, callback, ready),
                                  name=f"sluis-listen-{channel}", daemon=True)
        thread.start()
        self._listeners.append(thread)
        self._channels.add(channel)
        ready.wait(CONNECT_TIMEOUT)

    def _listen(self, channel: str, callback: Callable[[], None], ready: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)) as conn:
                    conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
                    ready.set()
                    callback()  # whatever was notified while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_POLL, stop_after=1):
                            callback()
            except psycopg.Error as exc:
                log.warning("database: listening on %s failed (%s); retrying", channel, exc)
                self._stop.wait(LISTEN_POLL)
            except Exception:
                log.exception("database: a %s listener failed", channel)
                self._stop.wait(LISTEN_POLL)

    def close(self) -> None:
        self._stop.set()
        self._wake_listeners()
        for thread in self._listeners:
            thread.join(LISTEN_POLL * 3)
        self._listeners.clear()
        self._pool.close()

    def _wake_listeners(self) -> None:
        """NOTIFY each channel listened to, so this process's listeners see the stop at once
        rather than within LISTEN_POLL (a node's stop waited for it). Other processes take it as
        one more wake: a pass that finds nothing new."""
        try:
            with self._pool.connection(timeout=CONNECT_TIMEOUT) as conn:
                for channel in sorted(self._channels):
                    conn.execute(pgsql.SQL("NOTIFY {}").format(pgsql.Identifier(channel)))
        except Exception as exc:   # closing anyway: the listeners then stop within LISTEN_POLL
            log.warning("database: could not wake the listeners at close (%s)", exc)
