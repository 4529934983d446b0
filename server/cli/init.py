"""`sluis init DIR`: a new setup — config with every default, host key, secret and audit keys, database."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from ...config import ConfigError, render_config
from ...keydelivery.sealing import create_key_file
from ..core import keyfiles, receiptkey
from ..formats import sshsig
from ..core.audit import AuditLog, has_records
from ..core.auditkey import create_audit_key
from ..core.clock import SystemClock
from ...config.settings import DatabaseSettings, parse_database_url
from ..core.stores import describe, open_store
from .common import operator

CONFIG_NAME = "sluis.toml"
HOST_KEY_NAME = "ssh_host_ed25519_key"
SECRET_KEY_NAME = "secret.key"
AUDIT_KEY_NAME = "audit.key"


def write_private(path: Path, data: bytes) -> None:
    """Create a secret file with mode 0600 from the start (never chmod after the fact)."""
    keyfiles.create_private(path, data, what="file")


# What a new setup gets that differs from the settings' defaults (which are what a config file
# without the key means, so that existing setups keep their behaviour on upgrade).
NEW_SETUP = {"policy": {"content": "kbi-list"}}


def init_setup(directory: Path, overrides: dict | None = None) -> Path:
    """Create a complete setup in `directory`; refuses to touch an existing one. `overrides`
    (section -> key -> raw value) win over NEW_SETUP, which wins over the defaults."""
    merged = {section: dict(values) for section, values in NEW_SETUP.items()}
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    overrides = merged
    try:
        database = DatabaseSettings(url=parse_database_url(overrides.get("database", {}).get("url", "")))
    except ValueError as exc:
        raise ConfigError(f"--database: {exc}") from None
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [name for name in (CONFIG_NAME, HOST_KEY_NAME, SECRET_KEY_NAME, AUDIT_KEY_NAME,
                                  receiptkey.KEY_FILE_NAME, "state.db")
                if (directory / name).exists()]
    if existing:
        raise FileExistsError(f"{directory} already holds a setup ({', '.join(existing)}); "
                              "refusing to overwrite it")
    db = open_store(database, directory / "state.db") if database.url else None
    if db is not None and has_records(db):
        db.close()
        raise FileExistsError(f"the database {describe(database.url)} already holds a setup "
                              "(its audit log is not empty); refusing to share it with a new one")
    config_path = directory / CONFIG_NAME
    write_private(config_path, render_config(overrides).encode())
    key = asyncssh.generate_private_key("ssh-ed25519", comment="sluis host key")
    write_private(directory / HOST_KEY_NAME, key.export_private_key("openssh"))
    write_private(directory / (HOST_KEY_NAME + ".pub"), key.export_public_key("openssh"))
    create_key_file(directory / SECRET_KEY_NAME)
    audit_key = create_audit_key(directory / AUDIT_KEY_NAME)
    receipt_key = receiptkey.create_key_file(receiptkey.key_path(directory / SECRET_KEY_NAME))
    db = db or open_store(database, directory / "state.db")
    actor = operator()
    AuditLog(db, SystemClock(), audit_key).record("sluis.init", actor=actor.name, source=actor.source,
                                                  host_key=key.get_fingerprint("sha256"),
                                                  receipt_key=sshsig.fingerprint(receipt_key.public_key()))
    db.close()
    return config_path
