"""Kafka door test fixtures.

``async def`` tests run on a fresh event loop each (no pytest-asyncio needed),
under asyncio and, when installed, uvloop (the server runs on uvloop when it is installed).
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from helpers import scaled

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


def pytest_generate_tests(metafunc):
    if inspect.iscoroutinefunction(metafunc.function):
        metafunc.fixturenames.append("_loop_kind")
        metafunc.parametrize("_loop_kind", LOOPS)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kind = pyfuncitem.funcargs.get("_loop_kind", "asyncio")
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    coro = fn(**args)
    if kind == "uvloop":
        uvloop.run(asyncio.wait_for(coro, scaled(90)))
    else:
        asyncio.run(asyncio.wait_for(coro, scaled(90)))
    return True
