"""The `softmaxce` group as a whole: how it is started, usage errors, the examples in its help, the
ImportError without the `[cli]` extra, and atomic output files."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import click
import pytest
from _cli_helpers import run

from softmaxce.classifier._atomic import atomic_path
from softmaxce.cli import main

COMMANDS = ["demo", "train", "predict", "evaluate", "gradcheck"]


def test_console_script_and_module_run_in_a_real_process():
    exe = shutil.which("softmaxce")
    assert exe is not None, "the softmaxce console script is not installed (pip install -e .)"
    out = subprocess.run(
        [exe, "gradcheck", "--classes", "3", "--batch", "2", "--features", "2", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("passed: largest scaled error")
    out = subprocess.run([sys.executable, "-m", "softmaxce", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from softmaxce._version import __version__

    assert out.stdout.strip() == f"softmaxce, version {__version__}"


def test_every_command_is_registered_once():
    assert sorted(main.commands) == sorted(COMMANDS)
    assert all(main.commands[name].name == name for name in COMMANDS)


def _examples(command: str) -> list[list[str]]:
    """The argument lists of the `softmaxce COMMAND ...` lines in the command's --help."""
    text = run(command, "--help").output.replace("\\\n", " ")
    lines = [re.sub(r"#.*", "", line).strip() for line in text.splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.startswith(f"softmaxce {command}")]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_are_valid_command_lines(command):
    """Every example printed by --help parses with the command's real options and arguments, so the
    help cannot drift from the options (a renamed or removed option fails here)."""
    examples = _examples(command)
    assert examples, f"no examples in `softmaxce {command} --help`"
    for args in examples:
        ctx = main.commands[command].make_context(command, list(args))  # raises click.UsageError when wrong
        assert ctx.params["quiet"] in (False, True)


def test_bad_usage_exits_2():
    assert run("train").exit_code == 2  # missing DATA
    assert run("nosuchcommand").exit_code == 2
    assert run("gradcheck", "--classes", "1").exit_code == 2
    assert run("train", "x.csv", "--target", "y", "--hidden", "12,abc").exit_code == 2
    assert run("demo", "--speed-size", "12y4").exit_code == 2
    with pytest.raises(click.UsageError):
        main.commands["train"].make_context("train", ["x.csv", "--target", "y", "--no-such-option"])


def test_without_the_cli_extra_import_names_it():
    """`import softmaxce.cli` without click (or another [cli] dependency) is one ImportError naming the extra."""
    code = (
        "import sys\n"
        "sys.modules['click'] = None  # as if click were not installed\n"
        "try:\n"
        "    import softmaxce.cli\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "click" in out.stdout and "pip install 'softmaxce[cli]'" in out.stdout


def test_atomic_path_never_leaves_a_half_written_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(str(target)) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]
    with atomic_path(str(tmp_path / "sub" / "new.json")) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "sub") and tmp.endswith(".json")
        open(tmp, "w").write("complete")
    assert (tmp_path / "sub" / "new.json").read_text() == "complete"


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    # Regression: mkstemp's private 0600 leaked into every output file; a finished file has the
    # permissions a plain open() gives it (0666 less the umask).
    umask = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "out.csv")) as tmp:
            with open(tmp, "w") as f:
                f.write("a,b\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644
