"""The operator's subcommands of ``umlog`` (topics, produce, consume, dump,
export, bench), one module each, registered from ``umlog/cli.py``.

Conventions (``_common.py``): ``--data-dir`` (default ``./umlog-data``, or
``$UMLOG_DATA_DIR``); tables and progress bars with rich on a terminal,
``--json`` for scripts; bad input exits 1 (2 for usage errors, as click does)
with ONE line ``error: ...`` on stderr. Commands that only read open the data
dir read-only, so they work while ``umlog serve`` holds it; commands that write
need the writer lock and say so in one line when a server has it.
"""
