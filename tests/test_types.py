"""The package type-checks: mypy over the real tree (as `sluis`) reports no error."""

from __future__ import annotations

import re

from tests.support.typecheck import PACKAGES, ROOT, run_mypy


def test_mypy_reports_no_errors_over_every_module():
    result = run_mypy()
    assert result.returncode == 0, f"mypy found errors:\n{result.stdout}{result.stderr}"
    checked = re.search(r"Success: no issues found in (\d+) source files", result.stdout)
    modules = sum(1 for name in PACKAGES for _ in (ROOT / name).rglob("*.py"))
    assert checked and int(checked[1]) >= modules, f"mypy did not check all {modules} modules:\n{result.stdout}"
