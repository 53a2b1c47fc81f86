"""Hardening tests: crash loops, fuzzing, limits, disk full, soak.

The drivers live in ``tools/`` (long runs from the command line, see
tools/README.md); these tests run short versions of them, so ``tools/`` is put
on sys.path here.
"""

from __future__ import annotations

import os
import sys

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools")
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

import asyncio  # noqa: E402
import inspect  # noqa: E402

import pytest  # noqa: E402
from helpers import scaled  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """``async def`` tests run on a fresh asyncio loop each."""
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(fn(**args), scaled(90)))
    return True
