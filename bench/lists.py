"""One-off measurements for the list policy (issue 11): not a test, nothing passes or fails.

    .venv/bin/python bench/lists.py validator      # 10,000-row list; 1 GiB streams
    .venv/bin/python bench/lists.py batch          # 300 small lists through `sluis send --batch`

The validator is timed alone (no tracemalloc), then run again under tracemalloc for its peak
Python memory. The 1 GiB inputs are generated in memory and fed in 64 KiB chunks, as the server
feeds it: a list of valid rows far past max_rows, and one endless line.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sluis.server.core.listcheck import ListCheck, make_rrn  # noqa: E402

HEADER = b"naam;voornaam;rijksregisternummer;inburgeringscontract;attest\n"
CHUNK = 64 * 1024
GIB = 1 << 30


def rows(count: int, seed: int = 0) -> bytes:
    start = date(1960 + seed % 40, 1, 1)
    return b"".join(f"Achternaam{i};Voornaam;{make_rrn(start + timedelta(days=i // 997), 1 + i % 997)};"
                    f"{'J' if i % 2 else 'N'};{'ja' if i % 3 else 'nee'}\n".encode() for i in range(count))


def feed(data_chunks, max_rows: int):
    check = ListCheck(max_rows)
    for chunk in data_chunks:
        check.feed(chunk)
    return check.finish()


def chunks_of(data: bytes):
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        yield bytes(view[i:i + CHUNK])


def stream(first: bytes, block: bytes, total: int):
    """`first`, then `block` repeated, in CHUNK pieces, `total` bytes in all."""
    yield from chunks_of(first)
    sent = len(first)
    while sent < total:
        for chunk in chunks_of(block):
            if sent >= total:
                return
            chunk = chunk[: total - sent]
            sent += len(chunk)
            yield chunk


def measure(name: str, make_chunks, size: int, max_rows: int, rounds: int) -> None:
    times = []
    verdict = None
    for _ in range(rounds):
        started = time.perf_counter()
        verdict = feed(make_chunks(), max_rows)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    feed(make_chunks(), max_rows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    seconds = statistics.median(times)
    print(f"| {name} | {size / (1 << 20):.1f} MiB | {seconds:.3f} s | {size / seconds / (1 << 20):.1f} MiB/s "
          f"| {verdict.rows} | {peak / (1 << 20):.2f} MiB | {'ok' if verdict.ok else verdict.problems[0]} |")


def validator() -> None:
    print("| input | size | time (median) | throughput | rows examined | peak memory | verdict |")
    print("|---|---:|---:|---:|---:|---:|---|")
    ten_k = HEADER + rows(10_000)
    measure("10,000-row list", lambda: chunks_of(ten_k), len(ten_k), 100_000, 5)
    hundred_k = HEADER + rows(100_000)
    measure("100,000-row list (the default max_rows)", lambda: chunks_of(hundred_k), len(hundred_k), 100_000, 3)
    block = rows(100_000, seed=7)
    measure("1 GiB of rows, max_rows 100000", lambda: stream(HEADER, block, GIB), GIB, 100_000, 1)
    line = b"x" * (1 << 20)
    measure("1 GiB, one line without end", lambda: stream(HEADER, line, GIB), GIB, 100_000, 1)


def batch(count: int = 300, rows_each: int = 50) -> None:
    from tests.support.server import SluisServer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = SluisServer(work / "srv", {"policy": {"content": "kbi-list"}})
        for i in range(count):
            server.add_tenant(f"gemeente-{i:03d}", nis=f"{10000 + i}", phones=("+32470123456",))
        server.add_user("agency", "sender")
        server.start()
        folder = work / "batch"
        folder.mkdir()
        for i in range(count):
            name = f"{10000 + i}_2026.csv" if i % 2 else f"lijst_gemeente-{i:03d}_2026.csv"
            (folder / name).write_bytes(HEADER + rows(rows_each, seed=i))
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "send", "--json", "--server",
                                 f"127.0.0.1:{server.port}", "--user", "agency", "--identity",
                                 str(server.accounts["agency"].key), "--host-key-fingerprint",
                                 server.host_key_fingerprint(), "--batch", str(folder)],
                                capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        published = server.app().db.query_one("SELECT count(*) FROM deliveries")[0]
        server.stop()
        server.close()
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{count} lists of {rows_each} rows ({size / 1024:.0f} KiB in all), half named by NIS code: "
              f"exit {result.returncode}, {published} published, {seconds:.1f} s "
              f"({seconds / count * 1000:.0f} ms a list)")


if __name__ == "__main__":
    {"validator": validator, "batch": batch}[sys.argv[1] if len(sys.argv) > 1 else "validator"]()
