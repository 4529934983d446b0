"""`sluis receipt allowed-signers|verify|show|keygen`: the signed receipts (docs/receipts.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..core import receiptkey
from ..core.receipts import NAMESPACE, SIGNER
from ..errors import InvalidInput, NotFound
from ..formats import sshsig
from .common import open_app

MAX_RECEIPT = 64 * 1024


def add_receipt_commands(commands: Any, command: Any) -> None:
    group = commands.add_parser("receipt", help="signed receipts of collected and ended deliveries").add_subparsers(
        dest="receipt_command", required=True, metavar="ACTION")
    signers = command(group, "allowed-signers", cmd_allowed_signers,
                      "print the allowed_signers line that verifies receipts with ssh-keygen",
                      "Print an OpenSSH allowed_signers line for the receipt key (identity 'sluis', namespace "
                      "'sluis-receipt'). With --all, one line for every key that signed a stored receipt.")
    signers.add_argument("--all", action="store_true", help="every key that ever signed a receipt here")
    verify = command(group, "verify", cmd_verify, "check a receipt's signature (as ssh-keygen -Y verify does)",
                     "Verify RECEIPT.json against RECEIPT.json.sig (default: the receipt's name + .sig) with "
                     "this setup's receipt keys, or with the keys of an allowed_signers file. Exit 1 if it "
                     "does not verify.")
    verify.add_argument("receipt", type=Path, metavar="RECEIPT.json")
    verify.add_argument("signature", type=Path, nargs="?", metavar="RECEIPT.json.sig")
    verify.add_argument("--allowed-signers", type=Path, metavar="FILE",
                        help="an allowed_signers file (then no sluis configuration is needed)")
    show = command(group, "show", cmd_show, "print the stored receipt of a delivery",
                   "Print the receipt of DELIVERY (the exact signed JSON); with --out DIR write "
                   "DIR/DELIVERY.json and DIR/DELIVERY.json.sig.")
    show.add_argument("delivery", metavar="DELIVERY")
    show.add_argument("--out", type=Path, metavar="DIR")
    command(group, "keygen", cmd_keygen, "create the receipt signing key beside the secret key",
            "Create receipt.key (ed25519, 0600) and receipt.key.pub beside the secret key. Refuses to "
            "overwrite. `serve` creates it by itself when it can write there; run this as root when the "
            "key directory is root-owned (systemd setups), then pass it as credential sluis-receipt-key.")


def _allowed_line(public_line: str) -> str:
    return f'{SIGNER} namespaces="{NAMESPACE}" {public_line}'


def _current_line(settings: Any) -> str:
    """The receipt key's public line (from receipt.key.pub when the key itself is not readable)."""
    return receiptkey.public_line(settings.resolve(settings.crypto.secret_key_file),
                                  os.environ.get("CREDENTIALS_DIRECTORY"))


def cmd_allowed_signers(args: Any) -> None:
    app = open_app(args)
    current = _current_line(app.settings)
    lines = [current]
    if args.all:
        lines += [s for s in app.receipts.signers() if s != current]
    for line in lines:
        print(_allowed_line(line))


def _read_allowed(path: Path) -> list:
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if SIGNER not in words[0].split(",") and "*" not in words[0]:
            continue
        if "namespaces=" in line and NAMESPACE not in line:
            continue
        try:
            keys.append(sshsig.parse_public_line(line))
        except sshsig.SignatureError as exc:
            raise InvalidInput(f"{path}:{number}: {exc}") from None
    if not keys:
        raise InvalidInput(f"{path} has no key for identity {SIGNER!r} and namespace {NAMESPACE!r}")
    return keys


def cmd_verify(args: Any) -> int:
    receipt_path: Path = args.receipt
    sig_path: Path = args.signature or Path(str(receipt_path) + ".sig")
    for path, cap in ((receipt_path, MAX_RECEIPT), (sig_path, sshsig.MAX_ARMORED)):
        if path.stat().st_size > cap:
            raise InvalidInput(f"{path} is larger than any receipt or signature ({cap} bytes)")
    message = receipt_path.read_bytes()
    signature = sig_path.read_bytes()
    if args.allowed_signers:
        allowed = _read_allowed(args.allowed_signers)
    else:
        app = open_app(args)
        lines = [_current_line(app.settings), *app.receipts.signers()]
        allowed = [sshsig.parse_public_line(line) for line in lines]
    try:
        key = sshsig.verify(signature, message, NAMESPACE, allowed)
    except sshsig.SignatureError as exc:
        print(f"BAD receipt {receipt_path}: {exc}", file=sys.stderr)
        return 1
    try:
        body = json.loads(message)
    except ValueError:
        body = {}
    print(f"Good receipt {receipt_path}: delivery {body.get('delivery')} to {body.get('tenant')}, "
          f"{body.get('outcome')} {body.get('ended_at')}, signed by {sshsig.fingerprint(key)}")
    return 0


def cmd_show(args: Any) -> None:
    app = open_app(args)
    receipt = app.receipts.get(args.delivery)
    if receipt is None:
        raise NotFound(f"no receipt for {args.delivery!r} (a delivery gets one when it is collected or ends)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / receipt.json_name).write_bytes(receipt.body)
        (args.out / receipt.sig_name).write_text(receipt.signature)
        print(f"wrote {args.out / receipt.json_name} and {args.out / receipt.sig_name}")
    else:
        sys.stdout.write(receipt.body.decode())


def cmd_keygen(args: Any) -> None:
    """Touches no database (it may run as root beside a root-owned secret key); `serve` records
    the key in the audit log (receipt.key.change) the first time it signs with it."""
    path = receiptkey.key_path(args.settings.resolve(args.settings.crypto.secret_key_file))
    key = receiptkey.create_key_file(path)
    print(f"created {path} ({sshsig.fingerprint(key.public_key())}); allowed_signers line:")
    print(_allowed_line(sshsig.public_line(key.public_key())))
