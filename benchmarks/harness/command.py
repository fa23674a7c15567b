"""A benchmark's command line, `python -m benchmarks.<name> [options]`: its parser, the
checks of its counts, and its `main`."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def options(name: str, description: str) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks.<name>`."""
    return argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)


def parsed(parser: argparse.ArgumentParser, argv: list[str] | None, *, at_least_one: tuple[str, ...] = ()):
    """The arguments of `argv`; each option named in `at_least_one` must be at least 1."""
    args = parser.parse_args(argv)
    for name in at_least_one:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def command(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    parse_args: Callable[[list[str] | None], argparse.Namespace],
) -> Callable[[list[str] | None], int]:
    """A benchmark's `main(argv)`: its `run` on the parsed arguments, on asyncio's event loop;
    the exit code is what `run` returns."""

    def main(argv: list[str] | None = None) -> int:
        return asyncio.run(run(parse_args(argv)))

    return main
