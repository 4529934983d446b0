"""Process hardening for `sluis serve`: no core dumps, no ptrace or /proc peeking by same-uid processes.

A core dump of the server would hold plaintext of uploads in progress and unsealed passphrases.
`forbid_core_dumps()` sets RLIMIT_CORE to 0 and clears the kernel's dumpable flag
(prctl PR_SET_DUMPABLE 0): the kernel then writes no core whatever the limit or core_pattern,
makes /proc/PID/* root-owned, and lets only CAP_SYS_PTRACE read the process's memory or environ.
The systemd units set `LimitCORE=0` as well.
"""

from __future__ import annotations

import ctypes
import os
import resource

PR_SET_DUMPABLE = 4   # <linux/prctl.h>
PR_GET_DUMPABLE = 3


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}) failed: {os.strerror(errno)}")
    return int(result)


def forbid_core_dumps() -> None:
    """Make this process non-dumpable with a core limit of 0 (raises OSError if the kernel refuses)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_DUMPABLE, 0)


def dumpable() -> bool:
    """The kernel's dumpable flag of this process."""
    return _prctl(PR_GET_DUMPABLE) != 0
