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


def _load_config_file(path: str) -> dict[str, Any]:
    """TOML; keys as the long options (``data-dir``, ``kafka``, ...), at the top
    level or under a ``[serve]`` table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        data = tomllib.load(f)
    table = data.get("serve", data)
    return {str(k).replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="umlog", prog_name="umlog")
def main(verbose: int) -> None:
    """umlog: a unified message log (Kafka's format, embedded or served)."""
    _setup_logging(verbose)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data directory [default: ./umlog-data].")
@click.option("--kafka", "kafka", metavar="HOST:PORT", default=None,
              help="Kafka listener [default: 127.0.0.1:9092]; port 0 picks a free one.")
@click.option("--advertise", metavar="HOST:PORT", default=None,
              help="Address given to clients in Metadata [default: the listener's].")
@click.option("--fsync", type=click.Choice(["never", "interval", "always"]), default=None,
              help="Durability of appends [default: never].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TOML file with the same settings; options given here win.")
@click.option("--auto-create/--no-auto-create", default=None,
              help="Create unknown topics on Metadata requests [default: on].")
@click.option("--default-partitions", type=click.IntRange(1, 100_000), default=None,
              help="Partitions of auto-created topics [default: 1].")
@click.option("--max-request-size", type=click.IntRange(1024, 2**31 - 1), default=None,
              help="Largest request frame in bytes [default: 104857600].")
@click.option("--group-initial-rebalance-delay-ms", type=click.IntRange(0, 300_000), default=None,
              help="How long a new group's first round waits for more members [default: 3000, as Kafka].")
@click.option("--max-connections", type=click.IntRange(1, 2**31 - 1), default=None,
              help="Connections past this are accepted and closed at once "
                   "[default: half the file descriptors left after opening the data dir].")
@click.option("--idle-timeout-ms", type=click.IntRange(0, 2**31 - 1), default=None,
              help="Close connections idle this long; 0 never [default: 600000, as Kafka].")
@click.option("--fetch-max-bytes", type=click.IntRange(1024, 2**31 - 1), default=None,
              help="Most bytes one Fetch answer holds, whatever the client asks [default: 57671680, as Kafka].")
def serve(config_file: str | None, **options: Any) -> None:
    """Serve the data dir over the Kafka protocol until SIGTERM/SIGINT."""
    from umlog.server.server import ServeConfig
    from umlog.server.server import serve as run

    settings: dict[str, Any] = _load_config_file(config_file) if config_file else {}
    settings.update({k: v for k, v in options.items() if v is not None})
    known = {f for f in ServeConfig.__dataclass_fields__}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise click.UsageError(f"unknown setting(s) in {config_file}: {', '.join(unknown)}")
    sys.exit(run(ServeConfig(**settings)))


# The operator's subcommands (umlog/commands/): light modules (click only at
# import), one line each.
from umlog.commands import bench, consume, dump, export, produce, topics  # noqa: E402

main.add_command(topics.topics)
main.add_command(produce.produce)
main.add_command(consume.consume)
main.add_command(dump.dump)
main.add_command(export.export)
main.add_command(bench.bench)
from umlog.commands import groups  # noqa: E402  (umlog groups list|describe)

main.add_command(groups.groups)


if __name__ == "__main__":  # pragma: no cover
    main()
