"""`sluis-upload`: the agency's upload client (paramiko), for scripts.

It verifies the server's host key (known_hosts or a pinned fingerprint, never trust-on-first-use),
uploads each file to /TENANT/NAME, checks the close status (paramiko's own close() discards it,
and that is where sluis reports an empty, gapped or refused upload) and then the stored size.
Exit status: 0 all uploaded, 1 some upload failed, 2 usage or connection problem.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from pathlib import Path

import paramiko
from paramiko.sftp import CMD_CLOSE

CHUNK = 32 * 1024


def _fingerprint(key: paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def connect(args: argparse.Namespace) -> paramiko.SFTPClient:
    transport = paramiko.Transport((args.host, args.port))
    transport.start_client(timeout=30)
    key = transport.get_remote_server_key()
    if args.host_key_fingerprint:
        if _fingerprint(key) != args.host_key_fingerprint:
            raise SystemExit(f"sluis-upload: host key {_fingerprint(key)} does not match the pinned "
                             f"{args.host_key_fingerprint}; refusing to connect")
    else:
        known = paramiko.HostKeys(str(args.known_hosts))
        name = args.host if args.port == 22 else f"[{args.host}]:{args.port}"
        if not known.check(name, key):
            raise SystemExit(f"sluis-upload: {name} with key {_fingerprint(key)} is not in {args.known_hosts}; "
                             "add it there or pass --host-key-fingerprint")
    transport.auth_publickey(args.user, paramiko.PKey.from_path(str(args.key)))
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    return client


def upload(client: paramiko.SFTPClient, source: Path, target: str) -> int:
    """Upload one file; returns the size the server reports. Raises OSError with the server's text."""
    size = 0
    handle = client.open(target, "wb")
    handle.set_pipelined(True)
    try:
        with open(source, "rb") as data:
            while chunk := data.read(CHUNK):
                handle.write(chunk)
                size += len(chunk)
        handle.flush()
    except BaseException:
        handle.close()
        raise
    handle._closed = True  # we close it ourselves below, to see the status
    client._request(CMD_CLOSE, handle.handle)
    stored = client.stat(target).st_size
    if stored != size:
        raise OSError(f"server reports {stored} bytes for {target}, but {size} were sent")
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluis-upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("tenant", metavar="TENANT", help="the municipality's folder, e.g. genk")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=22)
    parser.add_argument("--user", required=True)
    parser.add_argument("--key", type=Path, required=True, help="private key file")
    parser.add_argument("--known-hosts", type=Path, default=Path.home() / ".ssh" / "known_hosts")
    parser.add_argument("--host-key-fingerprint", metavar="SHA256:...", help="pin the server's host key")
    args = parser.parse_args(argv)
    try:
        client = connect(args)
    except (OSError, paramiko.SSHException) as exc:
        print(f"sluis-upload: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with client:
        for path in args.files:
            target = f"/{args.tenant}/{path.name}"
            try:
                size = upload(client, path, target)
            except OSError as exc:
                failed += 1
                print(f"FAILED {path} -> {target}: {exc}", file=sys.stderr)
            else:
                print(f"uploaded {path} -> {target} ({size} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
