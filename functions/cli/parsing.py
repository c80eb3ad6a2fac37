"""The pieces every `tierflow` command module builds its part of the parser and its output with."""

import argparse
import json
from collections.abc import Callable, Sequence


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (argparse prints the usage block too)."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse's name
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_group(commands, name: str, help_text: str):
    """A command group (`tierflow NAME COMMAND ...`); returns the subparsers to add commands to."""
    group = commands.add_parser(name, help=help_text)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND", parser_class=Parser)


def add_command(subparsers, name: str, run: Callable, help_text: str, json_output: bool = True):
    """A command that runs `run(deps, args)`; every command but a few takes --json."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(run=run)
    if json_output:
        parser.add_argument("--json", action="store_true", help="print stable JSON on stdout")
    return parser


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned columns, for people (machines use --json)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_json(value) -> None:
    """Stable JSON on stdout (`--json`)."""
    print(json.dumps(value, indent=2, default=str))


def whole_number(text: str) -> int:
    """argparse type: an integer, refused in one line otherwise."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None


def number(text: str) -> float:
    """argparse type: a number, refused in one line otherwise."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def positive_number(text: str) -> float:
    """argparse type: a number above 0, refused in one line otherwise."""
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value
