"""``python -m umlog``: the same as the ``umlog`` command."""

from umlog.cli import main

main()
