"""The `softmaxce` click group and the helpers every command shares.

Exit status: 0 on success, 2 on bad usage or bad data (one line on stderr naming the file, row and
column; never a traceback), 1 when `gradcheck` finds an error above its tolerance, 130 when
interrupted (SIGINT). Output files are written to temporary names in their directories and renamed
into place together when the command ends (`atomic_group`), so they are never half written and an
interrupted or failed command leaves none of them. The commands live in one module each and are
added to `main` in `__init__.py`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import numpy as np

from .._version import __version__
from ..classifier._atomic import atomic_group, atomic_path
from ._data import DataError

__all__ = [
    "CONTEXT",
    "DIRECTORY",
    "FILE",
    "main",
    "one_line_errors",
    "plain",
    "quiet_option",
    "sayer",
    "write_json",
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True}
FILE = click.Path(dir_okay=False)
DIRECTORY = click.Path(file_okay=False)

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="softmaxce")
def main() -> None:
    """softmaxce: exact, fast softmax cross-entropy (loss and gradient a - y), and a classifier built on it.

    \b
    Examples:
      softmaxce demo                                  # 1-minute tour, no download
      softmaxce train data.csv --target label --out model.npz --plots plots/
      softmaxce predict model.npz new.csv --proba --out predictions.csv
      softmaxce evaluate model.npz test.csv --target label
      softmaxce gradcheck --classes 10 --batch 8

    Run `softmaxce COMMAND --help` for the options of each command.
    """


def fail(message: str) -> NoReturn:
    """`error: <message>` on stderr and exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def one_line_errors(fn: F) -> F:
    """Runs a command with all-or-nothing outputs (`atomic_group`: the files it writes land together
    when it ends); turns DataError into `error: <one line>` on stderr and exit status 2, and an
    interrupt (Ctrl-C, SIGINT) into one line and exit status 130, with no output file written."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with atomic_group():
                return fn(*args, **kwargs)
        except DataError as e:
            fail(str(e).splitlines()[0] if str(e) else "bad data")
        except KeyboardInterrupt:
            click.echo("interrupted: no output file was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def quiet_option(fn: F) -> F:
    """The `-q / --quiet` flag, the same on every command."""
    return click.option(
        "-q", "--quiet", is_flag=True, help="No progress bars or progress lines; errors still go to stderr."
    )(fn)


def sayer(quiet: bool) -> Callable[[str], None]:
    """`say(message)`: a line on stdout, or nothing with --quiet."""
    if quiet:
        return lambda message: None
    return lambda message: click.echo(message)


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (so messages show 'yak', not np.str_('yak'))."""
    return value.item() if isinstance(value, np.generic) else value


def write_json(path: str, obj: Any) -> None:
    """Writes obj as indented JSON (NumPy scalars and arrays as plain values), atomically."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serializable: {type(o).__name__}")

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=default)
        f.write("\n")
