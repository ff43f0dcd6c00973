"""The CLI's conventions for options, kept in one place so that every command follows them.

List options: click (which typer vendors) takes one value per flag, so `--input a.warc.gz b.warc.gz` (what a
shell glob gives) fails with "unexpected extra argument". A `ListOptions` command spreads the values that follow
a list flag into one flag each before click parses them, so both `--input a b` and `--input a --input b` give
`[a, b]`. Values run up to the next word that starts with "-" (another option, or `--`, after which nothing is
spread). A list option therefore swallows positional arguments after it: give those first (no command has both).
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperOption


class ListOptions(TyperCommand):
    """A typer command whose list options (multiple=True) take several values after one flag."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_list_values(args, list_flags(self)))


def list_flags(command: TyperCommand) -> set[str]:
    """The flags (long and short) of the command's options that take several values."""
    return {flag for param in command.params if isinstance(param, TyperOption) and param.multiple
            for flag in param.opts}


def spread_list_values(args: list[str], flags: set[str]) -> list[str]:
    """`--input a b --output X` -> `--input a --input b --output X`, for each flag in `flags`."""
    out: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            return out + [arg, *rest]
        out.append(arg)
        flag = arg.split("=", 1)[0]
        if flag not in flags:
            continue
        if flag == arg and rest:  # a bare flag's first value is the next word, whatever it is (as in click)
            out.append(rest.pop(0))
        while rest and not _is_option(rest[0]):
            out += [flag, rest.pop(0)]
    return out


def _is_option(word: str) -> bool:
    return word.startswith("-") and len(word) > 1  # "-" alone is a value (standard input)
