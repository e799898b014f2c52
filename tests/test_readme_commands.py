"""Every `deploykit ...` command line written in README.md parses with the CLI: run with `--help` appended (which
still rejects an unknown option, and a flag given a value), each exits 0. Synopsis notation is read as a user would:
`[...]` optional, `a|b` the first choice, `MIN:OPT:MAX` a real range."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(text: str) -> list[str]:
    """`deploykit` command lines: those in fenced code blocks (with their indented continuation lines) and those
    in inline code spans."""
    commands: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        if line.startswith("deploykit "):
            commands.append(line)
        elif line[:1].isspace() and line.strip().startswith("[") and commands and commands[-1]:
            commands[-1] += " " + line.strip()
        else:
            commands.append("")  # a line of another kind ends a command
    commands = [c for c in commands if c]
    for span in re.findall(r"`(deploykit [^`]+)`", text):
        commands.append(span.replace("\\|", "|"))
    return list(dict.fromkeys(commands))


def as_argv(command: str) -> list[str]:
    command = re.split(r"\s(?:#|>|&&)", command)[0]  # comments, redirections, a second command
    command = command.replace("[", " ").replace("]", " ").replace("...", " ")
    command = command.replace("MIN:OPT:MAX", "1:8:32")
    argv = []
    for token in shlex.split(command)[1:]:  # drop "deploykit"
        if token == "|":
            continue
        argv.append(token.split("|")[0])
    return argv


COMMANDS = readme_commands(README.read_text())


def test_readme_has_commands():
    names = {as_argv(c)[0] for c in COMMANDS}
    assert {"export", "verify", "predict", "bench", "build", "train", "eval", "report", "data", "models"} <= names


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(cli, command):
    result = cli(*as_argv(command), "--help")
    assert result.exit_code == 0, f"{command}\n-> {as_argv(command)}\n{result.output}"
