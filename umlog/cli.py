"""The ``umlog`` command line: one click group, one small function per subcommand.

To add a subcommand (topics, produce, consume, dump, ...), define a function
decorated with ``@main.command()`` below (or in its own module that imports
``main`` and is imported at the bottom of this file); keep the work itself in
the library so it stays testable without the CLI. Heavy imports stay inside
the command functions so ``umlog --help`` is fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

__all__ = ["main"]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="umlog: %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="umlog", prog_name="umlog")
def main(verbose: int) -> None:
    """umlog: a unified message log (Kafka's format, embedded or served)."""
    _setup_logging(verbose)


class _SettingsError(click.ClickException):
    """A bad config file or value: one line on stderr, exit 2, nothing opened."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _setting_options(f):
    """One click option per declared setting that has a flag (umlog/server/settings.py)."""
    from umlog.server.door import all_settings

    for s in reversed(all_settings()):
        if s.flag is None:
            continue
        dest = f"{s.table}__{s.key}"
        default = "unset" if s.default is None else str(s.default).lower() if s.kind == "bool" else s.default
        shown = "" if "[default:" in s.help else f" [default: {default}]"
        help_ = f"{s.help} ({s.key} in [{s.table}] of the config file){shown}"
        if s.kind == "bool":
            f = click.option(s.flag, dest, default=None, help=help_)(f)
        elif s.kind == "int":
            f = click.option(s.flag, dest, type=click.IntRange(s.min, s.max), default=None, help=help_)(f)
        elif s.kind == "choice":
            f = click.option(s.flag, dest, type=click.Choice(s.choices), default=None, help=help_)(f)
        else:
            metavar = "HOST:PORT" if s.kind in ("hostport", "listeners") else "TEXT"
            if s.off:
                metavar += "|off"
            f = click.option(s.flag, dest, metavar=metavar, default=None, help=help_)(f)
    return f


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML config file: [server], one table per door ([kafka]), [topics.defaults]; "
                   "options given here win over it.")
@_setting_options
def serve(config_file: str | None, **options: Any) -> None:
    """Serve the data dir through every configured door until SIGTERM/SIGINT."""
    # kio registers a hypothesis strategy for each of its types at import
    # whenever hypothesis is importable (a test dependency): 0.5 s of start-up
    # on a quiet machine, several on a busy one, for nothing the server uses.
    sys.modules.setdefault("hypothesis", None)
    from umlog.server.door import all_settings
    from umlog.server.runner import serve as run
    from umlog.server.settings import SettingsError, load_file, resolve

    overrides = {k.replace("__", ".", 1): v for k, v in options.items()}
    try:
        data = load_file(config_file) if config_file else None
        settings = resolve(all_settings(), data, config_file or "", overrides)
    except SettingsError as e:
        raise _SettingsError(" ".join(str(e).split())) from None
    sys.exit(run(settings))


# The operator's subcommands (umlog/commands/): light modules (click only at
# import), one line each.
from umlog.commands import bench, check, consume, dump, export, produce, topics  # noqa: E402

main.add_command(topics.topics)
main.add_command(produce.produce)
main.add_command(consume.consume)
main.add_command(dump.dump)
main.add_command(check.check)
main.add_command(export.export)
main.add_command(bench.bench)
from umlog.commands import groups  # noqa: E402  (umlog groups list|describe)

main.add_command(groups.groups)
from umlog.commands import share_groups  # noqa: E402  (umlog share-groups list|describe)

main.add_command(share_groups.share_groups)
from umlog.commands import webhooks  # noqa: E402  (umlog webhooks list|add|remove|status)

main.add_command(webhooks.webhooks)
from umlog.commands import dlq  # noqa: E402  (umlog dlq list|show|redrive)

main.add_command(dlq.dlq)
from umlog.commands import security  # noqa: E402  (umlog users ..., umlog acls ...)

main.add_command(security.users)
main.add_command(security.acls)

from umlog.commands import mirror, tier  # noqa: E402  (umlog tier status, umlog mirror [status])

main.add_command(tier.tier)
main.add_command(mirror.mirror)


if __name__ == "__main__":  # pragma: no cover
    main()
