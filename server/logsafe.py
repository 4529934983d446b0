"""Log lines a client cannot forge: control characters escaped, client strings quoted.

The journal copy of the audit lines is the chain's outside anchor, so a request path or user name
holding a newline, escape codes or a bidi override must never start a line of its own or hide
text. `SafeFormatter` (installed once on the root handler by `sluis` itself, so it covers every
logger, asyncssh's included) escapes C0, DEL, C1, the Unicode line/paragraph separators and the
bidi controls in every message. `quoted()` marks where a client-supplied string starts and ends,
so that `user="a actor=b"` cannot pass for two fields. Traceback lines stay lines, but each
continuation line starts with `  | ` so none of them can pass for a record.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# C0, DEL, C1; ALM; LRM/RLM; line and paragraph separators; bidi embeddings, overrides, isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
CONTINUATION = "  | "


def _code(match: re.Match[str]) -> str:
    point = ord(match.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def escape(text: str) -> str:
    """`text` with every unsafe character written as \\xNN or \\uNNNN."""
    return _UNSAFE.sub(_code, text)


def quoted(value: Any) -> str:
    """A client-supplied value as one unambiguous token: in double quotes, with backslash and
    quote escaped and control characters written out; None is `-`."""
    if value is None:
        return "-"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escape(text)}"'


class SafeFormatter(logging.Formatter):
    """A `logging.Formatter` whose output is one escaped line per record (plus marked traceback
    lines), whatever the message or its arguments hold."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape(self.formatMessage(record))
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))  # never the cached, unescaped exc_text
        elif record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            line += "".join("\n" + CONTINUATION + escape(part) for part in block.splitlines())
        return line


def stream_handler(stream: Any, fmt: str) -> logging.Handler:
    """A handler writing SafeFormatter lines to `stream` (what `sluis` gives the root logger)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(fmt))
    return handler
