"""`sluis-upload`: deprecated alias of `sluis send --to TENANT FILE...`, kept for existing scripts.

It takes the old arguments (TENANT FILE... --host --port --user --key --known-hosts
--host-key-fingerprint), says on stderr that it is deprecated, and runs `sluis send` with them:
the same checks (pinned host key, close status, stored size) plus the local list check, which
`--no-list-check` turns off as in `sluis send`. Exit status as `sluis send`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import send


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
    parser.add_argument("--no-list-check", action="store_true", help="skip the local list check")
    args = parser.parse_args(argv)
    print("sluis-upload is deprecated and will be removed: use `sluis send --to TENANT FILE...`",
          file=sys.stderr)
    pin = (["--host-key-fingerprint", args.host_key_fingerprint] if args.host_key_fingerprint
           else ["--known-hosts", str(args.known_hosts)])
    return send.main(["--server", f"{args.host}:{args.port}", "--user", args.user, "--identity", str(args.key),
                      *pin, *(["--no-list-check"] if args.no_list_check else []),
                      "--to", args.tenant, *map(str, args.files)])


if __name__ == "__main__":
    sys.exit(main())
