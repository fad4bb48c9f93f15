"""Generated documentation stays in step with what it documents."""

from __future__ import annotations

import subprocess
import sys

from tests.support.cluster import REPO


def test_field_reference_matches_the_crd() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "crd_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "\nmake test\n" in ci
