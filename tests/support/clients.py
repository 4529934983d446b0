"""Finding the external programs the tests drive (sftp, psftp, age, 7z, ...).

A test that needs a program it cannot find skips, unless SLUIS_REQUIRE_CLIENTS=1 (set by
.ci/run), in which case it fails: CI must never pass by skipping the real clients.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(*names: str) -> str:
    """Return the path of the first of `names` on PATH, or skip/fail the calling test."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"none of {', '.join(names)} is installed"
    if os.environ.get("SLUIS_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{message}, and SLUIS_REQUIRE_CLIENTS=1 requires it")
    pytest.skip(message)
