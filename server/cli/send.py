"""`sluis send`: the agency's client for the year's lists (paramiko), one file or a whole batch.

    sluis send --server HOST:PORT --user NAME --identity KEYFILE --to TENANT FILE...
    sluis send ... --batch DIR          (each file names its municipality: genk.csv, 71016_2026.csv)

Every file is checked locally with the server's list validator first (docs/listpolicy.md), then
uploaded to /TENANT/NAME and verified: the server's verdict on close, the stored size, and the
SHA-256 of what was sent. A refused file does not stop the others; an unknown or changed host key
stops everything. Exit status: 0 every file sent (or valid, with --dry-run), 1 some file failed,
2 usage, connection or host-key problem.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.listcheck import check_file
from .sendclient import TRANSIENT, Connection, Endpoint, HostKeyError, Refused

if TYPE_CHECKING:  # rich is imported only when a bar is drawn (a terminal), not at start
    from rich.progress import Progress as Bar, TaskID

SENT, VALID, REFUSED, FAILED = "sent", "valid", "refused", "failed"
DEFAULT_MAX_ROWS = 100000
RETRY_WAITS = (1.0, 3.0, 9.0)       # seconds before each retry after a transient failure
_NIS = re.compile(r"(?<!\d)\d{5}(?!\d)")

# Further `sluis send WORD ...` commands (such as `receipts`), by their first word: func(argv) -> exit.
SEND_SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {}


@dataclass
class Result:
    """One file's outcome, as printed and as --json gives it."""

    file: str
    tenant: str | None
    name: str
    size: int | None
    sha256: str | None
    verdict: str
    message: str = ""

    def line(self) -> str:
        size = f"{self.size} bytes" if self.size is not None else "-"
        text = f"{self.verdict.upper():8} {self.tenant or '?':20} {self.name}  {size}  sha256={self.sha256 or '-'}"
        return text + (f"  {self.message}" if self.message else "")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="sluis send", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Settings also come from $SLUIS_SERVER, $SLUIS_USER, "
                                            "$SLUIS_IDENTITY and $SLUIS_KNOWN_HOSTS.")
    parser.add_argument("--server", default=env.get("SLUIS_SERVER"), metavar="HOST:PORT",
                        help="the sluis server (port 22 if omitted)")
    parser.add_argument("--user", default=env.get("SLUIS_USER"), metavar="NAME")
    parser.add_argument("--identity", default=env.get("SLUIS_IDENTITY"), metavar="KEYFILE",
                        help="the SSH private key to log in with")
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--known-hosts", metavar="FILE",
                     default=env.get("SLUIS_KNOWN_HOSTS", str(Path.home() / ".ssh" / "known_hosts")))
    pin.add_argument("--host-key-fingerprint", metavar="SHA256:...", help="pin the server's host key")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="TENANT", help="the municipality (tenant name or NIS code) for FILE...")
    what.add_argument("--batch", type=Path, metavar="DIR",
                      help="send every file in DIR to the municipality its name names")
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE")
    parser.add_argument("--dry-run", action="store_true", help="only check the files locally; send nothing")
    parser.add_argument("--no-list-check", action="store_true",
                        help="skip the local list check (the server still applies its own [policy])")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="the local check's row bound")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    parser.add_argument("--retries", type=int, default=len(RETRY_WAITS),
                        help="retries after a transient failure (connection lost), per file")
    return parser


def parse_server(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text.strip("[]"), 22
    return host.strip("[]"), int(port)


def named_in(file_name: str, folders: list[str]) -> tuple[set[str], set[str]]:
    """The folder names a file name carries as whole words (a name inside a longer one that also
    matches, such as 'truiden' in 'sint-truiden', does not count), and its five-digit groups."""
    stem = file_name.lower()
    spans = {f: [m.span() for m in re.finditer(rf"(?<![a-z0-9]){re.escape(f)}(?![a-z0-9])", stem)]
             for f in folders}
    spans = {f: s for f, s in spans.items() if s}
    names = {f for f, found in spans.items()
             if not all(any(a <= start and end <= b and other != f for other, o in spans.items() for a, b in o)
                        for start, end in found)}
    return names, set(_NIS.findall(stem))


class Sender:
    """Runs one `sluis send`: resolves targets, checks, uploads with retries, reports."""

    def __init__(self, args: argparse.Namespace, connection: Connection | None, out: Progress) -> None:
        self.args = args
        self.connection = connection
        self.out = out
        self._folders: list[str] | None = None

    def jobs(self) -> list[tuple[Path, str | None, str]]:
        """(file, tenant or None, why not) for every file to send."""
        if self.args.batch is None:
            return [(path, self.args.to, "") for path in self.args.files]
        files = sorted(p for p in self.args.batch.iterdir() if p.is_file() and not p.name.startswith("."))
        return [(path, *self.resolve(path.name)) for path in files]

    def resolve(self, file_name: str) -> tuple[str | None, str]:
        """The tenant a batch file's name names, or (None, why)."""
        if self.connection is None:      # --dry-run: no server to ask; show what the name says
            _, codes = named_in(file_name, [])
            return ", ".join(sorted(codes)) or Path(file_name).stem, ""
        if self._folders is None:
            self._folders = self.connection.folders()
        names, codes = named_in(file_name, self._folders)
        for code in codes:
            tenant = self.connection.tenant_for(code)
            if tenant and tenant != code:
                names.add(tenant)
        if len(names) == 1:
            return names.pop(), ""
        if not names:
            return None, "the file name names no municipality on the server (use its folder name or NIS code)"
        return None, f"the file name names several municipalities ({', '.join(sorted(names))})"

    def run(self) -> list[Result]:
        results = []
        for path, tenant, why in self.jobs():
            result = self.one(path, tenant, why)
            results.append(result)
            self.out.done(result)
        return results

    def one(self, path: Path, tenant: str | None, why: str) -> Result:
        result = Result(str(path), tenant, path.name, None, None, FAILED)
        if not path.is_file():
            result.message = "no such file"
            return result
        if tenant is None:
            result.message = why
            return result
        if not self.args.no_list_check:
            verdict = check_file(path, self.args.max_rows)
            if not verdict.ok:
                result.verdict, result.message = REFUSED, f"local check: {verdict.summary()}"
                return result
        if self.connection is None:
            result.verdict, result.size = VALID, path.stat().st_size
            return result
        if self.args.batch is None and self.args.to:
            resolved = self.connection.tenant_for(tenant)
            result.tenant = tenant = resolved or tenant
        return self.upload(path, tenant, result)

    def upload(self, path: Path, tenant: str, result: Result) -> Result:
        assert self.connection is not None
        target = f"/{tenant}/{path.name}"
        for attempt in range(self.args.retries + 1):
            self.out.start(path, tenant, path.stat().st_size)
            try:
                result.size, result.sha256 = self.connection.upload(path, target, self.out.advance)
            except Refused as exc:
                result.verdict, result.message = REFUSED, str(exc)
                return result
            except TRANSIENT as exc:
                result.message = f"connection failed: {exc or type(exc).__name__}"
                if attempt == self.args.retries:
                    return result
                time.sleep(RETRY_WAITS[min(attempt, len(RETRY_WAITS) - 1)])
                try:
                    self.connection.reconnect()
                except TRANSIENT:
                    continue
                continue
            result.verdict, result.message = SENT, ""
            return result
        return result


class Progress:
    """A rich progress bar on a terminal; plain lines otherwise (and nothing with --json)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Bar | None = None
        self.task: TaskID | None = None
        if not quiet and sys.stderr.isatty():
            from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn,
                                       TransferSpeedColumn)
            from rich.console import Console
            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), console=Console(stderr=True), transient=True,
                           redirect_stdout=False, redirect_stderr=False)  # result lines stay on stdout
            self.bar.start()

    def start(self, path: Path, tenant: str, size: int) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"{path.name} → {tenant}", total=size)
        elif not self.quiet:
            print(f"sending {path.name} to {tenant} ({size} bytes)", file=sys.stderr, flush=True)

    def advance(self, count: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task, count)

    def done(self, result: Result) -> None:
        if self.quiet:
            return
        if self.bar is not None and sys.stdout.isatty():    # above the bar, on the same terminal
            self.bar.console.print(result.line(), markup=False, highlight=False, soft_wrap=True)
        else:
            print(result.line(), flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SEND_SUBCOMMANDS:
        return SEND_SUBCOMMANDS[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch is None and not args.files:
        parser.error("--to TENANT needs at least one FILE")
    if args.batch is not None and args.files:
        parser.error("--batch DIR takes no FILE arguments")
    if args.retries < 0:
        parser.error("--retries must be 0 or more")
    if args.batch is not None and not args.batch.is_dir():
        parser.error(f"--batch {args.batch}: not a directory")
    connection = None
    if not args.dry_run:
        missing = [flag for flag, value in (("--server", args.server), ("--user", args.user),
                                            ("--identity", args.identity)) if not value]
        if missing:
            parser.error(f"{', '.join(missing)} required (or $SLUIS_SERVER, $SLUIS_USER, $SLUIS_IDENTITY)")
        host, port = parse_server(args.server)
        connection = Connection(Endpoint(host, port, args.user, Path(args.identity).expanduser(),
                                         Path(args.known_hosts).expanduser() if args.known_hosts else None,
                                         args.host_key_fingerprint))
    progress = Progress(quiet=args.json)
    try:
        if connection is not None:
            connection.open()
        results = Sender(args, connection, progress).run()
    except HostKeyError as exc:
        progress.stop()
        print(f"sluis send: STOPPED: {exc}", file=sys.stderr)
        return 2
    except (TRANSIENT + (OSError,)) as exc:
        progress.stop()
        print(f"sluis send: cannot connect to {args.server}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        if connection is not None:
            connection.close()
    progress.stop()
    good = VALID if args.dry_run else SENT
    failed = [r for r in results if r.verdict != good]
    if args.json:
        print(json.dumps({"ok": not failed, "dry_run": args.dry_run, "files": [asdict(r) for r in results]},
                         indent=2))
    else:
        print(f"{len(results) - len(failed)} of {len(results)} files {good}"
              + (f"; {len(failed)} not: see above" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
