"""Hardening tests: crash loops, fuzzing, limits, disk full, soak (issue 6).

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
