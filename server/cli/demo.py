"""`python -m sluis.server.cli.demo DIR`: a ready-to-try setup for `make demo`.

Two municipalities (genk, gent), an agency sender and a clerk for each, with fresh SSH keys in
DIR/keys; console SMS (passphrases appear in the server log: demo only). Reuses DIR if present.
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

import asyncssh

from ...config import load_settings
from ..app import build_app
from ..core.directory import Actor
from .common import operator
from .init import CONFIG_NAME, init_setup, write_private

USERS = (("agency", "sender", None), ("genk-clerk", "recipient", "genk"), ("gent-clerk", "recipient", "gent"))
TENANTS = (("genk", "71016", "+32470123456", "age"), ("gent", "44021", "+32471234567", "zip"))


def setup(directory: Path) -> Path:
    config = directory / CONFIG_NAME
    if config.exists():
        return config
    init_setup(directory, {"server": {"listen": "127.0.0.1:2222"}})
    app = build_app(load_settings(config))
    actor = operator()
    keys = directory / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    for name, nis, phone, fmt in TENANTS:
        app.directory.add_tenant(actor, name, nis=nis, phones=[phone], fmt=fmt)
        app.protocols.register(Actor(actor.name, "demo"), app.directory.tenant(name), signed=date(2021, 5, 1),
                               effective=date(2021, 6, 2), reference=f"demo protocol {name}")
    for name, role, tenant_name in USERS:
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}@sluis-demo")
        write_private(keys / name, key.export_private_key("openssh"))
        (keys / f"{name}.pub").write_bytes(key.export_public_key("openssh"))
        app.directory.add_user(actor, name, role=role, tenant=tenant_name,
                               keys=[(key.export_public_key("openssh").decode(), f"{name}.pub")])
    app.close()
    return config


def main() -> None:
    os.umask(0o077)
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-data").resolve()
    config = setup(directory)
    k = directory / "keys"
    opts = "-P 2222 -o StrictHostKeyChecking=accept-new"
    fingerprint = asyncssh.read_public_key(str(directory / "ssh_host_ed25519_key.pub")).get_fingerprint("sha256")
    print(f"""
sluis demo in {directory}  (config {config})
host key fingerprint: {fingerprint}  (compare it when your client first connects)

In another terminal, upload as the agency:
  printf 'naam;voornaam;rijksregisternummer;inburgeringscontract;attest\\nJanssens;Jan;85.07.30-033.28;J;N\\n' > lijst.csv
  sftp {opts} -i {k}/agency agency@127.0.0.1 <<< 'put lijst.csv /genk/lijst.csv'
or with the agency's client (checks the list first; [policy] content = "kbi-list" refuses anything else):
  .venv/bin/sluis send --server 127.0.0.1:2222 --user agency --identity {k}/agency \\
      --host-key-fingerprint {fingerprint} --to genk lijst.csv

The passphrase appears below as "[sms console-…]". Then, as the Genk clerk:
  sftp {opts} -i {k}/genk-clerk genk-clerk@127.0.0.1 <<< 'get lijst.csv.age'
  age -d lijst.csv.age > lijst.csv        # type the passphrase from the SMS line

Gent receives an AES-256 zip instead (open with 7-Zip): upload to /gent/ and log in as gent-clerk.
Status:  .venv/bin/sluis -c {config} status
""")


if __name__ == "__main__":
    main()
