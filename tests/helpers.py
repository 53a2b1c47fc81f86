"""Shared test helpers (tests/ is on sys.path: see pytest's pythonpath)."""

import os

import umlog

# The directory holding the umlog package these tests import: the source tree
# after `build_ext --inplace`, or site-packages when installed (CI).
UMLOG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(umlog.__file__)))


def subprocess_env() -> dict:
    """Environment for a child Python that must import the same umlog.

    Run such children with cwd outside the source tree too: `python -c` puts
    the cwd first on sys.path, and an unbuilt tree must not shadow the package.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = UMLOG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    return env
