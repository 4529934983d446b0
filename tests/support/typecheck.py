"""mypy over the real tree as the `sluis` package it is installed as.

The editable install maps `sluis.server` → `server/` and so on (pyproject `package-dir`), which
mypy cannot follow: this builds a temporary `sluis/` of symlinks to the four top-level folders,
runs mypy on it with the `[tool.mypy]` settings in pyproject.toml, and prints the errors with
the repository's own paths. `python -m tests.support.typecheck` from the repository root.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "keydelivery", "retention", "config")   # pyproject [tool.setuptools] package-dir
TIMEOUT_SECONDS = 300


def run_mypy(root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """mypy -p sluis over symlinks to `root`'s packages; the output names `server/…`, not `sluis/server/…`."""
    with tempfile.TemporaryDirectory(prefix="sluis-mypy-") as tmp:
        package = Path(tmp) / "sluis"
        package.mkdir()
        for name in PACKAGES:
            (package / name).symlink_to(root / name, target_is_directory=True)
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(root / "pyproject.toml"),
             "--cache-dir", str(root / ".mypy_cache"), "--python-executable", sys.executable,
             "--no-color-output", "--show-error-codes", "-p", "sluis"],
            cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    output = "".join(line.removeprefix("sluis/") + "\n" for line in result.stdout.splitlines())
    return subprocess.CompletedProcess(result.args, result.returncode, output, result.stderr)


def main() -> int:
    result = run_mypy()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
