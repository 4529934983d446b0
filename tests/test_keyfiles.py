"""One rule for every secret key file (secret, audit and receipt keys): server/core/keyfiles.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sluis.keydelivery.sealing import Sealer, load_sealer
from sluis.keydelivery.sealing import create_key_file as create_secret_key
from sluis.server.core import keyfiles, receiptkey
from sluis.server.core.auditkey import create_audit_key, load_audit_key
from sluis.server.core.keyfiles import KeyFileError
from sluis.server.core.receiptkey import ReceiptKeyError


def make_secret(path: Path) -> None:
    create_secret_key(path)


def make_audit(path: Path) -> None:
    create_audit_key(path)


def make_receipt(path: Path) -> None:
    receiptkey.create_key_file(path)


def load_secret(path: Path) -> object:
    return Sealer.from_file(path)


def load_audit(path: Path) -> object:
    return load_audit_key(path, None)


def load_receipt(path: Path) -> object:
    return receiptkey.load_key(path)


KINDS = {
    "secret": (make_secret, load_secret, KeyFileError),
    "audit": (make_audit, load_audit, KeyFileError),
    "receipt": (make_receipt, load_receipt, ReceiptKeyError),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return KINDS[request.param]


def test_created_with_mode_0600_and_loadable(tmp_path: Path, kind) -> None:
    make, load, _ = kind
    path = tmp_path / "k"
    make(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) is not None
    path.chmod(0o400)
    assert load(path) is not None


@pytest.mark.parametrize("mode", [0o700, 0o640, 0o604, 0o644, 0o200])
def test_any_mode_but_0600_or_0400_is_refused(tmp_path: Path, kind, mode: int) -> None:
    make, load, error = kind
    path = tmp_path / "k"
    make(path)
    path.chmod(mode)
    with pytest.raises(error, match=rf"mode {mode:04o}.*chmod 600"):
        load(path)


def test_a_symlink_is_refused_even_to_a_good_key(tmp_path: Path, kind) -> None:
    make, load, error = kind
    make(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(error, match="symbolic link"):
        load(tmp_path / "link")


def test_a_directory_is_refused(tmp_path: Path, kind) -> None:
    _, load, error = kind
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(error, match="not a regular file"):
        load(tmp_path / "dir")


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"keep me")
    for make in (make_secret, receiptkey.create_key_file):
        with pytest.raises(FileExistsError, match="refusing to overwrite"):
            make(path)
    assert path.read_bytes() == b"keep me"
    # the audit key adopts an existing file (another process just made it) instead of failing
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="holds 7 bytes; it must be exactly 32"):
        make_audit(path)
    assert path.read_bytes() == b"keep me"


def test_a_create_that_cannot_write_names_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "k"
    with pytest.raises(KeyFileError, match="cannot create audit key.*audit_key_file"):
        make_audit(missing)
    with pytest.raises(ReceiptKeyError, match="cannot create receipt key.*receipt keygen"):
        make_receipt(missing)


def test_exact_and_maximum_sizes(tmp_path: Path) -> None:
    path = tmp_path / "k"
    keyfiles.create_private(path, b"x" * 33, what="test key")
    with pytest.raises(KeyFileError, match="test key .* holds 33 bytes; it must be exactly 32"):
        keyfiles.read_private(path, what="test key", size=32)
    with pytest.raises(KeyFileError, match="holds 33 bytes; a key is at most 32"):
        keyfiles.read_private(path, what="test key", max_size=32)
    assert keyfiles.read_private(path, what="test key", max_size=33) == b"x" * 33
    assert keyfiles.read_private(path, what="test key", size=33) == b"x" * 33


def test_the_credential_wins_and_may_be_group_readable_but_not_world_readable(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    assert keyfiles.credential(str(creds), "sluis-secret-key") is None
    assert keyfiles.credential(None, "sluis-secret-key") is None
    make_secret(tmp_path / "secret.key")
    make_secret(creds / "sluis-secret-key")
    (creds / "sluis-secret-key").chmod(0o640)   # systemd's ACL for the service user shows as group bits
    sealed = load_sealer(tmp_path / "secret.key", str(creds)).seal(b"x")
    (creds / "sluis-secret-key").chmod(0o600)
    assert Sealer.from_file(creds / "sluis-secret-key").open(sealed) == b"x"
    (creds / "sluis-secret-key").chmod(0o644)
    with pytest.raises(KeyFileError, match="credential .* readable by others"):
        load_sealer(tmp_path / "secret.key", str(creds))


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "k"

    def full(fd: int, data) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        keyfiles.create_private(path, b"secret", what="test key")
    assert not os.path.lexists(path)
