"""The source stays lint-clean (ruff, configured in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_is_clean():
    if not os.path.exists(os.path.join(ROOT, "pyproject.toml")):
        pytest.skip("not running from a source checkout")
    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    if not os.path.exists(ruff):
        pytest.skip("ruff is not installed (pip install '.[test]')")
    r = subprocess.run([ruff, "check", "umlog", "tests", "bench", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
