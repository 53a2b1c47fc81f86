"""Shared test helpers (tests/ is on sys.path: see pytest's pythonpath)."""

import os

import umlog

# The directory holding the umlog package these tests import: the source tree
# after `build_ext --inplace`, or site-packages when installed (CI).
UMLOG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(umlog.__file__)))


def subprocess_env() -> dict:
    """Environment for a child Python that must import the same umlog.

    `python -c` and `python -m` put the cwd first on sys.path, and a checkout
    whose extension was never built in place (CI installs the package into a
    venv) must not shadow the installed package: PYTHONSAFEPATH turns that off,
    and children still run with cwd outside the source tree where they can.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = UMLOG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONSAFEPATH"] = "1"
    return env


# --- time: the one knob for a slow machine ---------------------------------------
#
# Tests never synchronise with a fixed sleep: they wait for the event they assert
# (``wait_until``) with a generous deadline. Every deadline goes through
# ``scaled``, so a slower machine raises one number, UMLOG_TEST_TIME_SCALE
# (default 1; CI sets 3), instead of editing tests.

TIME_SCALE = float(os.environ.get("UMLOG_TEST_TIME_SCALE", "3" if os.environ.get("CI") else "1"))


def scaled(seconds: float) -> float:
    """A deadline or timeout in seconds, stretched by UMLOG_TEST_TIME_SCALE."""
    return seconds * TIME_SCALE


def _polls(predicate, timeout: float, what: str):
    """The one deadline loop behind both waits: yields while ``predicate()`` is
    false, returns its first true value, raises AssertionError at the deadline."""
    import time

    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f}s waiting for {what} (last: {value!r})")
        yield


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate()`` until it returns a true value, and return that value.

    ``timeout`` is scaled by UMLOG_TEST_TIME_SCALE. On expiry an AssertionError
    names ``what`` and the last value seen, so a failure says what never happened.
    """
    import time

    polls = _polls(predicate, timeout, what)
    try:
        while True:
            next(polls)
            time.sleep(interval)
    except StopIteration as done:
        return done.value


async def wait_until_async(predicate, timeout: float = 10.0, what: str = "condition", interval: float = 0.005):
    """``wait_until`` for a test running on an event loop: sleeps yield to the loop,
    so what the test waits for (a door answering, a timer firing) can happen."""
    import asyncio

    polls = _polls(predicate, timeout, what)
    try:
        while True:
            next(polls)
            await asyncio.sleep(interval)
    except StopIteration as done:
        return done.value


# --- outside tools --------------------------------------------------------------------


def require_tool(path: str | None, name: str, install: str) -> str:
    """``path`` if the tool was found; otherwise skip on a developer's machine and
    fail when CI=true (a silent skip in CI would hide a missing install step)."""
    import pytest

    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed and CI=true ({install})")
    pytest.skip(f"{name} is not installed ({install})")


def stop_paho(client) -> None:
    """Stop a paho-mqtt client's network thread and close its sockets.

    paho 2.x closes the socket pair ``loop_start`` makes (its wake-up channel)
    only in ``Client.__del__``; a client caught in a reference cycle (its
    callbacks) is finalised by the garbage collector, which may finalise the
    sockets first: an unclosed-socket ResourceWarning, an error in this suite,
    raised in whichever test happens to run then."""
    client.loop_stop()
    client._reset_sockets()
