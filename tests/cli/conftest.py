"""Run the real ``umlog`` command (``python -m umlog``) in a temp working dir."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import subprocess_env


class Cli:
    def __init__(self, cwd):
        self.cwd = cwd

    def __call__(self, *args, input: bytes | str | None = None, ok: bool = True, timeout: float = 120):
        if isinstance(input, str):
            input = input.encode()
        r = subprocess.run([sys.executable, "-m", "umlog", *map(str, args)], cwd=self.cwd, input=input,
                           capture_output=True, env=subprocess_env(), timeout=timeout)
        r.out = r.stdout.decode("utf-8", "replace")
        r.err = r.stderr.decode("utf-8", "replace")
        if ok:
            assert r.returncode == 0, (args, r.returncode, r.err)
        return r

    def json(self, *args, **kw):
        return json.loads(self(*args, "--json", **kw).out)

    def error(self, *args, code: int = 1, **kw) -> str:
        """Run a command that must fail: exit ``code``, ONE line on stderr, returned."""
        r = self(*args, ok=False, **kw)
        assert r.returncode == code, (args, r.returncode, r.err, r.out)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1, r.err
        return lines[0]


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path)
