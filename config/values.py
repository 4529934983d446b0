"""Parsers for the value types settings use: durations, sizes, addresses, enums.

Each parser takes the raw TOML value and returns the typed value, or raises ValueError with a
message that says what is allowed; the loader adds the key's name.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Callable

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|y)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_duration(value: Any) -> int:
    """'90s', '15m', '24h', '30d', '2w', '5y' -> seconds (a year is 365 days)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"expected a duration such as '90s', '15m', '24h', '30d' or '5y', got {value!r}")


def format_duration(seconds: int) -> str:
    """The shortest exact way to write `seconds` in the notation parse_duration reads."""
    for unit in ("y", "w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_size(value: Any) -> int:
    """'64KiB', '8MiB', '2GiB' or a plain number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    raise ValueError(f"expected a size such as '64KiB', '8MiB' or '2GiB', got {value!r}")


def size_range(low: int, high: int) -> Callable[[Any], int]:
    """A size (as parse_size) between low and high bytes inclusive."""
    def parse(value: Any) -> int:
        size = parse_size(value)
        if not low <= size <= high:
            raise ValueError(f"expected a size from {format_size(low)} to {format_size(high)}, got {value!r}")
        return size
    return parse


def format_size(size: int) -> str:
    """The largest binary unit that writes `size` exactly."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)


def parse_listen(value: Any) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port); port 0 picks a free port (tests)."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if sep and host and port.isdigit() and 0 <= int(port) < 65536:
            return host, int(port)
    raise ValueError(f"expected HOST:PORT such as '127.0.0.1:2222' or '[::]:22', got {value!r}")


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def parse_e164(value: Any) -> str:
    """'' (none) or a phone number in E.164: '+' and 8 to 15 digits."""
    text = parse_str(value)
    if text and not re.fullmatch(r"\+[1-9]\d{7,14}", text):
        raise ValueError(f"expected a phone number in E.164 form such as '+32470123456', got {text!r}")
    return text


def parse_address(value: Any) -> str:
    """'' (none) or an e-mail address."""
    text = parse_str(value)
    if text and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise ValueError(f"expected an e-mail address such as 'soc@example.be', got {text!r}")
    return text


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def parse_path(value: Any) -> Path:
    return Path(parse_str(value))


def parse_paths(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a non-empty list of paths, got {value!r}")
    return tuple(Path(v) for v in value)


def int_range(low: int, high: int) -> Callable[[Any], int]:
    """A parser for whole numbers from `low` to `high` inclusive."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[Any], str]:
    """A parser for a string that must be one of `choices`."""

    def parse(value: Any) -> str:
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"expected one of {allowed}, got {value!r}")
        return value

    return parse


def parse_networks(value: Any) -> tuple[str, ...]:
    """A list of CIDR blocks or addresses ('10.0.0.0/8', '2001:db8::/48', '192.0.2.7') -> normalised."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of addresses or CIDR blocks such as '10.0.0.0/8', got {value!r}")
    try:
        return tuple(str(ipaddress.ip_network(v.strip(), strict=False)) for v in value)
    except ValueError as exc:
        raise ValueError(f"expected addresses or CIDR blocks such as '10.0.0.0/8': {exc}") from None


def duration_range(low: int, high: int) -> Callable[[Any], int]:
    """A duration (as parse_duration) from `low` to `high` seconds inclusive."""
    def parse(value: Any) -> int:
        seconds = parse_duration(value)
        if not low <= seconds <= high:
            raise ValueError(f"expected a duration from {format_duration(low)} to {format_duration(high)}, got {value!r}")
        return seconds
    return parse


def parse_node_name(value: Any) -> str:
    """'' (the host name) or a name of letters, digits, '.', '_', '-' (at most 64)."""
    text = parse_str(value).strip()
    if text and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise ValueError(f"expected a node name of at most 64 letters, digits, '.', '_' or '-', got {value!r}")
    return text


def parse_database_url(value: Any) -> str:
    """Empty (SQLite in the data directory), a libpq URI or a key=value connection string."""
    text = parse_str(value).strip()
    if text and not (text.startswith(("postgresql://", "postgres://")) or "=" in text):
        raise ValueError(f"expected a PostgreSQL URI (postgresql://…) or a libpq connection string "
                         f"(host=… dbname=…), or empty for SQLite; got {text.split('@')[-1]!r}")
    return text
