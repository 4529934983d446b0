"""Refusal texts on the SFTP channel's stderr, for clients that do not print the status message.

OpenSSH sftp ('close remote: Failure') and PuTTY psftp ('error while closing: failure') show only
the SFTP status code, not the message sluis puts in it. Both copy the channel's extended data
(stderr) to their own stderr, so a [policy] refusal is also written there: the sender sees the
lines and fields at fault whatever the client. The status message stays the primary channel.
"""

from __future__ import annotations

import logging

import asyncssh

from ..logsafe import escape

log = logging.getLogger("sluis.sftp")
MAX_NOTICE = 2000


def tell_client(chan: asyncssh.SSHServerChannel, text: str) -> None:
    """Write one line to the client's stderr; a channel that is already gone is ignored."""
    line = "sluis: " + escape(text)[:MAX_NOTICE] + "\n"
    try:
        chan.write_stderr(line.encode())
    except (OSError, asyncssh.Error, BrokenPipeError, RuntimeError) as exc:
        log.debug("could not write a notice to the client: %s", exc)
