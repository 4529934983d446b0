"""Driving the real `age` binary through a pseudo-terminal.

age reads passphrases only from a terminal (/dev/tty), never from a pipe, so the child gets a
pty as its controlling terminal and we type the passphrase whenever it prompts.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import subprocess
import termios
import time
from dataclasses import dataclass

# "Enter passphrase (leave empty to autogenerate a secure one): ", "Confirm passphrase: ",
# "Enter passphrase: ".
PROMPT = re.compile(rb"passphrase[^\n]*?: ", re.IGNORECASE)


@dataclass(frozen=True)
class AgeRun:
    """How an age run ended: exit code, what it showed on the terminal, and its stdout."""

    returncode: int
    terminal: bytes
    stdout: bytes


def _take_controlling_terminal() -> None:
    """In the child (a new session): make the pty on stdin the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _wait_for_echo_off(master: int, deadline: float) -> None:
    """Give age a moment to turn echo off after prompting, so the passphrase is not echoed.

    Typing early would still work (the line is buffered), it would only show on the terminal.
    """
    give_up = min(deadline, time.monotonic() + 2.0)
    while termios.tcgetattr(master)[3] & termios.ECHO and time.monotonic() < give_up:
        time.sleep(0.005)


def run_age(args: list[str], passphrases: list[str], *, timeout: float = 30.0) -> AgeRun:
    """Run `args`, answering the n-th passphrase prompt with passphrases[n]; bounded by `timeout`."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_take_controlling_terminal,
        )
    finally:
        os.close(slave)
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    terminal = bytearray()
    stdout = bytearray()
    open_fds = {master, out_fd}
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        # Drain the terminal and stdout together: a child blocked on a full stdout pipe would
        # otherwise never finish.
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{args!r} did not finish in {timeout} s; terminal: {bytes(terminal)!r}")
            ready, _, _ = select.select(list(open_fds), [], [], min(remaining, 0.1))
            if not ready and proc.poll() is not None and master in open_fds:
                # The child exited but the pty stays readable-less; nothing more will come.
                open_fds.discard(master)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO on the pty once the child has closed it
                    data = b""
                if not data:
                    open_fds.discard(fd)
                elif fd == out_fd:
                    stdout += data
                else:
                    terminal += data
                    prompts = len(PROMPT.findall(terminal))
                    while answered < prompts and answered < len(passphrases):
                        _wait_for_echo_off(master, deadline)
                        os.write(master, passphrases[answered].encode("utf-8") + b"\n")
                        answered += 1
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(master)
        proc.stdout.close()
    return AgeRun(returncode, bytes(terminal), bytes(stdout))
