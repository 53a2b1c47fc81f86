"""Shared plumbing of the subcommands: options, opening the data dir, errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

__all__ = [
    "CliError",
    "Command",
    "CliGroup",
    "data_dir_option",
    "json_option",
    "open_data_dir",
    "fail",
    "emit_json",
    "console",
    "human_bytes",
    "parse_config_pairs",
]

DEFAULT_DATA_DIR = "./umlog-data"


class CliError(click.ClickException):
    """Bad input or a failed operation: ``error: <message>`` on stderr, exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _OneLineUsageError(click.UsageError):
    """A usage error in one line (click's default adds the usage and a hint)."""

    def show(self, file: Any = None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.message}{where}", err=True)


def _one_line(e: click.UsageError, ctx: click.Context) -> click.UsageError:
    if isinstance(e, _OneLineUsageError):
        return e
    return _OneLineUsageError(" ".join(e.format_message().split()), e.ctx or ctx)


class _OneLineUsage:
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except click.UsageError as e:
            raise _one_line(e, ctx) from None


class Command(_OneLineUsage, click.Command):
    """A subcommand whose usage errors are one line on stderr (exit 2)."""


class CliGroup(_OneLineUsage, click.Group):
    """A group of subcommands, the same; its subcommands are ``Command``s."""

    command_class = Command

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            raise _one_line(e, ctx) from None


def fail(message: str) -> CliError:
    return CliError(" ".join(str(message).split()))  # one line, whatever the message holds


def data_dir_option(f: Callable) -> Callable:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=DEFAULT_DATA_DIR,
        envvar="UMLOG_DATA_DIR",
        show_default=True,
        help="Data directory (or $UMLOG_DATA_DIR).",
    )(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(f)


@contextmanager
def open_data_dir(data_dir: str, *, readonly: bool, create: bool = False) -> Iterator[Any]:
    """The data dir as a Broker, with engine errors turned into one-line CLI errors.

    Read-only opens take no lock (they work beside a running server); writable
    ones hold the writer lock. The background cleaner does not run in CLI
    sessions. ``create``: a missing data dir is created (else an error).
    """
    import umlog
    from umlog.errors import DataDirLockedError, UmlogError

    if not create and not os.path.isdir(data_dir):
        raise fail(f"no data dir at {data_dir} (create a topic first: umlog topics create NAME)")
    try:
        b = umlog.open(data_dir, readonly=readonly, cleaner_interval_ms=None)
    except DataDirLockedError as e:
        raise fail(f"{e}; stop that process (umlog serve?) or go through its Kafka port") from None
    except UmlogError as e:
        raise fail(str(e)) from None
    try:
        yield b
    except UmlogError as e:
        raise fail(str(e)) from None
    finally:
        b.close()


def emit_json(obj: Any) -> None:
    import json

    click.echo(json.dumps(obj, indent=None, sort_keys=False, default=str))


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def parse_config_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    """``key=value`` strings -> a dict (values are validated by the engine)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"config {pair!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def stdout_binary():
    return sys.stdout.buffer
