"""Tenants (municipalities), users and their SSH keys: the administrative records, audited."""

from __future__ import annotations

import re

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import asyncssh
import nacl.exceptions
import nacl.pwhash

from ..errors import AlreadyExists, InvalidInput, NotFound
from .audit import AuditLog
from .clock import Clock, iso
from .records import FORMATS, ROLE_RECIPIENT, ROLES, Format, Role, Tenant, User, UserKey
from .store import Conflict, Row, Store, Tx

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NIS_CODE = re.compile(r"^\d{5}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
FUNCTION_MAX = 200
RESERVED_TENANT_NAMES = ("receipts",)  # a folder of the sender's SFTP view (server/sftp/views.py)


def _check_email(value: str | None, flag: str) -> None:
    if value and not EMAIL.match(value):
        raise InvalidInput(f"{flag} {value!r}: expected an e-mail address such as dpo@genk.be")


def _check_function(value: str | None) -> None:
    if value is not None and (len(value) > FUNCTION_MAX or not value.isprintable()):
        raise InvalidInput(f"--function: at most {FUNCTION_MAX} printable characters")


@dataclass(frozen=True)
class Actor:
    """Who made an administrative change, and from where (for the audit log)."""

    name: str
    source: str = "cli"


def tenant_phones(conn: Tx | Store, tenant_id: int) -> list[str]:
    """A tenant's registered phones (E.164), in order, read in `conn` (a transaction, or not)."""
    return [r[0] for r in conn.execute("SELECT e164 FROM tenant_phones WHERE tenant_id = ? ORDER BY position",
                                       (tenant_id,))]


def tenant_name(conn: Tx | Store, tenant_id: int) -> str:
    """A tenant's name by id, read in `conn` (NotFound if there is none): the one lookup of it."""
    row = conn.execute("SELECT name FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
    if row is None:
        raise NotFound(f"no tenant with id {tenant_id}")
    return row[0]


def hash_password(password: str) -> bytes:
    """argon2id with libsodium's interactive limits: slow enough for guessing, fast enough to log in."""
    return nacl.pwhash.argon2id.str(password.encode())


def verify_password(stored: bytes, password: str) -> bool:
    """Blocking (tens of ms): call it off the event loop."""
    try:
        return nacl.pwhash.verify(stored, password.encode())
    except nacl.exceptions.InvalidkeyError:
        return False


def parse_public_keys(text: str, origin: str) -> list[asyncssh.SSHKey]:
    """Keys from an OpenSSH public key file (one or more lines)."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                keys.append(asyncssh.import_public_key(line.strip()))
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise InvalidInput(f"{origin}, line {number}: not an SSH public key ({exc})") from None
    if not keys:
        raise InvalidInput(f"{origin}: contains no SSH public key")
    return keys


class Directory:
    """Reads and changes tenants, users and keys; every change leaves an audit record."""

    def __init__(self, db: Store, audit: AuditLog, clock: Clock) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock

    # --- tenants -------------------------------------------------------------------------------
    def add_tenant(self, actor: Actor, name: str, *, phones: Iterable[str], nis: str | None = None,
                   email: str | None = None, fmt: str = "age", dpo_name: str | None = None,
                   dpo_email: str | None = None, dpo_phone: str | None = None) -> Tenant:
        if not TENANT_NAME.match(name):
            raise InvalidInput(f"tenant name {name!r}: use a short lowercase slug such as 'genk' "
                               "(letters, digits and '-', at most 40)")
        if name in RESERVED_TENANT_NAMES:
            raise InvalidInput(f"tenant name {name!r} is reserved: senders see their receipts in /{name}/")
        if nis is not None and not NIS_CODE.match(nis):
            raise InvalidInput(f"NIS code {nis!r}: expected five digits, such as 71016 for Genk")
        if fmt not in FORMATS:
            raise InvalidInput(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        _check_email(dpo_email, "--dpo-email")
        phones = list(phones)
        if not phones:
            raise InvalidInput("a tenant needs at least one --phone for key delivery")
        with self.db.writer() as tx:
            try:
                cur = tx.execute("INSERT INTO tenants (name, nis, format, email, active, created_at,"
                                 " dpo_name, dpo_email, dpo_phone) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?) RETURNING id",
                                 (name, nis, fmt, email, iso(self.clock.now()), dpo_name or None,
                                  dpo_email or None, dpo_phone or None))
                tenant_id = int(cur.fetchone()[0])
            except Conflict:
                raise AlreadyExists(f"tenant {name!r} exists already") from None
            self._set_phones(tx, tenant_id, phones)
            self.audit.append(tx, "tenant.add", actor=actor.name, tenant=name, source=actor.source,
                              nis=nis, format=fmt, phones=len(phones), email=bool(email),
                              dpo=bool(dpo_name or dpo_email or dpo_phone))
        return self.tenant(name)

    def _set_phones(self, tx: Tx, tenant_id: int, phones: list[str]) -> None:
        tx.execute("DELETE FROM tenant_phones WHERE tenant_id = ?", (tenant_id,))
        for position, e164 in enumerate(dict.fromkeys(phones)):
            tx.execute("INSERT INTO tenant_phones (tenant_id, e164, position) VALUES (?, ?, ?)",
                       (tenant_id, e164, position))

    def update_tenant(self, actor: Actor, name: str, *, phones: list[str] | None = None,
                      email: str | None = None, fmt: str | None = None, dpo_name: str | None = None,
                      dpo_email: str | None = None, dpo_phone: str | None = None) -> Tenant:
        """Change what is given; '' clears e-mail and DPO fields. A phone change is audited with
        how many numbers were added and removed (the incidents tracker tells the DPO)."""
        tenant = self.tenant(name)
        _check_email(dpo_email, "--dpo-email")
        if fmt is not None and fmt not in FORMATS:
            raise InvalidInput(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        with self.db.writer(tenant=tenant.id) as tx:
            before = tenant_phones(tx, tenant.id)   # under the tenant's lock: the diff is exact
            if phones:
                self._set_phones(tx, tenant.id, phones)
            for column, value in (("dpo_name", dpo_name), ("dpo_email", dpo_email), ("dpo_phone", dpo_phone)):
                if value is not None:
                    tx.execute(f"UPDATE tenants SET {column} = ? WHERE id = ?", (value or None, tenant.id))
            if email is not None:
                tx.execute("UPDATE tenants SET email = ? WHERE id = ?", (email or None, tenant.id))
            if fmt is not None:
                tx.execute("UPDATE tenants SET format = ? WHERE id = ?", (fmt, tenant.id))
            self.audit.append(tx, "tenant.change", actor=actor.name, tenant=name, source=actor.source,
                              phones=len(phones) if phones else None, email=email is not None,
                              format=fmt,
                              phones_added=len(set(phones) - set(before)) if phones else None,
                              phones_removed=len(set(before) - set(phones)) if phones else None,
                              dpo=any(v is not None for v in (dpo_name, dpo_email, dpo_phone)))
        return self.tenant(name)

    def disable_tenant(self, actor: Actor, name: str) -> None:
        tenant = self.tenant(name)
        with self.db.writer() as tx:
            tx.execute("UPDATE tenants SET active = 0 WHERE id = ?", (tenant.id,))
            self.audit.append(tx, "tenant.disable", actor=actor.name, tenant=name, source=actor.source)

    def tenant(self, name: str) -> Tenant:
        row = self.db.query_one("SELECT * FROM tenants WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no tenant named {name!r}")
        return self._tenant(row)

    def tenant_by_nis(self, nis: str) -> Tenant:
        """The tenant with this NIS code (the active one first, if a code was ever reused)."""
        row = self.db.query_one("SELECT * FROM tenants WHERE nis = ? ORDER BY active DESC, id LIMIT 1", (nis,))
        if row is None:
            raise NotFound(f"no municipality with NIS code {nis}")
        return self._tenant(row)

    def tenant_by_id(self, tenant_id: int) -> Tenant:
        row = self.db.query_one("SELECT * FROM tenants WHERE id = ?", (tenant_id,))
        if row is None:
            raise NotFound(f"no tenant with id {tenant_id}")
        return self._tenant(row)

    def tenants(self, *, active_only: bool = False) -> list[Tenant]:
        sql = "SELECT * FROM tenants" + (" WHERE active = 1" if active_only else "") + " ORDER BY name"
        return [self._tenant(row) for row in self.db.query(sql)]

    def _tenant(self, row: Row) -> Tenant:
        phones = tuple(tenant_phones(self.db, row["id"]))
        return Tenant(id=row["id"], name=row["name"], nis=row["nis"], format=Format(row["format"]),
                      email=row["email"], active=bool(row["active"]), phones=phones,
                      dpo_name=row["dpo_name"], dpo_email=row["dpo_email"], dpo_phone=row["dpo_phone"])

    # --- users ---------------------------------------------------------------------------------
    def add_user(self, actor: Actor, name: str, *, role: str, tenant: str | None = None,
                 keys: Iterable[tuple[str, str]] = (), password: str | None = None,
                 function: str = "", email: str | None = None) -> User:
        """`keys` are (text of a public key file, where it came from) pairs."""
        if not USER_NAME.match(name):
            raise InvalidInput(f"user name {name!r}: lowercase letters, digits, '.', '_' and '-', at most 64")
        if role not in ROLES:
            raise InvalidInput(f"role {role!r}: expected sender or recipient")
        if (role == ROLE_RECIPIENT) != (tenant is not None):
            raise InvalidInput("a recipient belongs to exactly one --tenant; a sender to none")
        _check_function(function)
        _check_email(email, "--email")
        tenant_id = self.tenant(tenant).id if tenant else None
        parsed = [(key, origin) for text, origin in keys for key in parse_public_keys(text, origin)]
        if not parsed and not password:
            raise InvalidInput(f"user {name!r} needs at least one --key or a password (--password-stdin)")
        pw_hash = hash_password(password) if password else None
        with self.db.writer() as tx:
            try:
                cur = tx.execute("INSERT INTO users (name, role, tenant_id, active, password_hash, created_at,"
                                 " function, email) VALUES (?, ?, ?, 1, ?, ?, ?, ?) RETURNING id",
                                 (name, role, tenant_id, pw_hash, iso(self.clock.now()), function,
                                  email or None))
                user_id = int(cur.fetchone()[0])
            except Conflict:
                raise AlreadyExists(f"user {name!r} exists already") from None
            for key, _origin in parsed:
                self._insert_key(tx, user_id, key)
            self.audit.append(tx, "user.add", actor=actor.name, tenant=tenant, source=actor.source,
                              user=name, role=role, keys=[k.get_fingerprint("sha256") for k, _ in parsed],
                              password=bool(password), function=function, email=bool(email))
        return self.user(name)

    def set_user(self, actor: Actor, name: str, *, function: str | None = None) -> User:
        """Change a user's function profile (protocol art. 4)."""
        user = self.user(name)
        _check_function(function)
        with self.db.writer() as tx:
            if function is not None:
                tx.execute("UPDATE users SET function = ? WHERE id = ?", (function, user.id))
            self.audit.append(tx, "user.change", actor=actor.name, source=actor.source, user=name,
                              tenant=self._tenant_name(user), function=function)
        return self.user(name)

    def _insert_key(self, tx: Tx, user_id: int, key: asyncssh.SSHKey, expires: str | None = None) -> str:
        fingerprint = key.get_fingerprint("sha256")
        try:
            tx.execute("INSERT INTO user_keys (user_id, fingerprint, public_key, comment, added_at, expires_at)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       (user_id, fingerprint, key.export_public_key("openssh").decode().strip(),
                        key.get_comment() or "", iso(self.clock.now()), expires))
        except Conflict:
            raise AlreadyExists(f"key {fingerprint} is registered for this user already") from None
        return fingerprint

    def add_key(self, actor: Actor, name: str, text: str, origin: str, *,
                expires: datetime | None = None) -> list[str]:
        """Register the keys in `text`; from `expires` on they no longer log in."""
        user = self.user(name)
        keys = parse_public_keys(text, origin)
        until = iso(expires) if expires else None
        if expires is not None and expires <= self.clock.now():
            raise InvalidInput(f"--expires {until}: that moment has passed already")
        with self.db.writer() as tx:
            added = [self._insert_key(tx, user.id, key, until) for key in keys]
            self.audit.append(tx, "user.key.add", actor=actor.name, source=actor.source, user=name,
                              tenant=self._tenant_name(user), keys=added, expires=until)
        return added

    def remove_key(self, actor: Actor, name: str, text: str, origin: str) -> list[str]:
        user = self.user(name)
        fingerprints = [k.get_fingerprint("sha256") for k in parse_public_keys(text, origin)]
        with self.db.writer() as tx:
            removed = [fp for fp in fingerprints if tx.execute(
                "DELETE FROM user_keys WHERE user_id = ? AND fingerprint = ?", (user.id, fp)).rowcount]
            if not removed:
                raise NotFound(f"none of the keys in {origin} is registered for {name!r}")
            self.audit.append(tx, "user.key.remove", actor=actor.name, source=actor.source, user=name,
                              tenant=self._tenant_name(user), keys=removed)
        return removed

    def disable_user(self, actor: Actor, name: str) -> None:
        user = self.user(name)
        with self.db.writer() as tx:
            tx.execute("UPDATE users SET active = 0 WHERE id = ?", (user.id,))
            self.audit.append(tx, "user.disable", actor=actor.name, source=actor.source, user=name,
                              tenant=self._tenant_name(user))

    def _tenant_name(self, user: User) -> str | None:
        return self.tenant_label(user.tenant_id)

    def tenant_name(self, tenant_id: int) -> str:
        """A tenant's name by id (NotFound if there is none): for records and log lines."""
        return tenant_name(self.db, tenant_id)

    def tenant_label(self, tenant_id: int | None) -> str | None:
        """The name of a user's tenant, or None for a user without one (a sender)."""
        return self.tenant_name(tenant_id) if tenant_id else None

    def user_by_id(self, user_id: int) -> User:
        row = self.db.query_one("SELECT * FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        return _user(row)

    def user(self, name: str) -> User:
        row = self.db.query_one("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return _user(row)

    def find_user(self, name: str) -> User | None:
        row = self.db.query_one("SELECT * FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    def users(self) -> list[User]:
        return [_user(row) for row in self.db.query("SELECT * FROM users ORDER BY name")]

    def keys(self, user: User) -> list[UserKey]:
        """Every registered key of the user, expired ones included (for listing and review)."""
        return [_key(r) for r in self.db.query("SELECT * FROM user_keys WHERE user_id = ? ORDER BY id", (user.id,))]

    def usable_keys(self, user: User) -> list[UserKey]:
        """The keys that may log in now: not expired."""
        return [_key(r) for r in self.db.query(
            "SELECT * FROM user_keys WHERE user_id = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY id",
            (user.id, iso(self.clock.now())))]

    def barred_among(self, names: Iterable[str]) -> set[str]:
        """Of these user names, those that may no longer log in (user or tenant disabled, or
        gone): one query, for the watcher that ends such users' live sessions."""
        wanted, allowed = sorted(set(names)), set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.query(f"SELECT u.name FROM users u LEFT JOIN tenants t ON t.id = u.tenant_id WHERE"
                                 f" u.name IN ({marks}) AND u.active = 1 AND (u.tenant_id IS NULL OR t.active = 1)",
                                 tuple(chunk))
            allowed |= {row[0] for row in rows}
        return set(wanted) - allowed


def _key(row: Row) -> UserKey:
    return UserKey(id=row["id"], user_id=row["user_id"], fingerprint=row["fingerprint"],
                   public_key=row["public_key"], comment=row["comment"], added_at=row["added_at"],
                   expires_at=row["expires_at"])


def _user(row: Row) -> User:
    return User(id=row["id"], name=row["name"], role=Role(row["role"]), tenant_id=row["tenant_id"],
                active=bool(row["active"]), password_hash=row["password_hash"], function=row["function"],
                email=row["email"])
