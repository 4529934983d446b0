"""Who holds a lease (an outbox job, a node name): `machine:pid:tag`, and whether that process
is known to be gone, so its leases need not be waited out after a crash.
"""

from __future__ import annotations

import os
import secrets
import socket


def machine() -> str:
    """This host and PID namespace ('host~inode'): pids can be checked only within one (containers
    on one host may share a host name but never see each other's pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}~{namespace}"


def process_name() -> str:
    """A lease holder's name: machine, pid and a random tag (a pid is reused after a restart)."""
    return f"{machine()}:{os.getpid()}:{secrets.token_hex(3)}"


def _parts(name: str) -> tuple[str, str]:
    host, pid, _tag = (name.rsplit(":", 2) + ["", ""])[:3]
    return host, pid


def holder_gone(holder: str, me: str) -> bool:
    """Whether lease holder `holder`, seen by process `me`, is a process of the same machine (host
    and PID namespace) that no longer runs. Our own pid under another tag is an earlier process
    that had it (a container restarts with the same pid): gone. Other machines' leases expire."""
    host, pid = _parts(holder)
    my_host, my_pid = _parts(me)
    if holder == me or host != my_host or host != machine() or not pid.isdigit():
        return False
    if pid == my_pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
