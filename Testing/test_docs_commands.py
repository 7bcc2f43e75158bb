"""The docs cannot drift from the command line: every `volgan ...` line in a code block of README.md and
docs/*.md is checked against the real argparse parser (``VolGANCore.cli.build_parser``), parse only.

- A concrete command line (no synopsis brackets) must be accepted by ``parse_args``: a renamed or removed
  option, a wrong choice (``--amp fast``), a missing required option or a stray argument fails the test.
  Paths are only strings here; nothing is read or run.
- A synopsis line (``[--opt X]``, ``A|B``, ``(...)``, ``...``) must name an existing sub-command, and every
  ``--option`` it mentions must exist for that sub-command.

``torchrun ... -m VolGANCore.cli train ...`` lines are checked as ``volgan train ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from VolGANCore.cli import _leaf_parsers, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYNOPSIS = re.compile(r"\[|\]|\||\(|\)|\.\.\.|…")
FENCE = re.compile(r"^\s*```")


def _code_lines(path: Path):
    """(line number, logical line) of every line inside a fenced code block; backslash continuations joined."""
    inside, buf, start = False, "", 0
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(raw):
            inside, buf = not inside, ""
            continue
        if not inside:
            continue
        line = raw.strip()
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield start, buf + line
        buf = ""


def _volgan_argv(line: str) -> list[str] | None:
    """The arguments after `volgan` (or after `-m VolGANCore.cli` of a torchrun line), comment removed; None when
    the line runs no volgan command."""
    line = re.sub(r"^\$\s+", "", line)
    if line.startswith("volgan "):
        rest = line[len("volgan "):]
    elif line.startswith("torchrun ") and "-m VolGANCore.cli " in line:
        rest = line.split("-m VolGANCore.cli ", 1)[1]
    else:
        return None
    try:
        return shlex.split(rest, comments=True)
    except ValueError as exc:   # unbalanced quotes
        raise AssertionError(f"cannot split {line!r}: {exc}") from exc


def _doc_commands():
    out = []
    for path in DOCS:
        for no, line in _code_lines(path):
            argv = _volgan_argv(line)
            if argv is not None:
                out.append(pytest.param(argv, line, id=f"{path.relative_to(ROOT)}:{no}"))
    return out


COMMANDS = _doc_commands()


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.fixture(scope="module")
def leaves(parser):
    return dict(_leaf_parsers(parser))


def _leaf_for(argv: list[str], leaves: dict) -> tuple[str, argparse.ArgumentParser]:
    words = [a for a in argv if not a.startswith("-")][:2]
    for n in (2, 1):
        path = " ".join(words[:n])
        if path in leaves:
            return path, leaves[path]
    raise AssertionError(f"no volgan sub-command {' '.join(words)!r}")


def test_the_docs_have_volgan_commands_to_check():
    lines = [str(p.values[1]) for p in COMMANDS]
    assert len(lines) > 60, len(lines)
    assert any(line.startswith("torchrun") for line in lines)
    assert any(SYNOPSIS.search(line) for line in lines) and any(not SYNOPSIS.search(line) for line in lines)


SHELL_OPERATORS = {">", ">>", "2>", "2>&1", "|", "&&", "||", ";", "&"}


@pytest.mark.parametrize(("argv", "line"), COMMANDS)
def test_doc_command_line_matches_the_parser(argv, line, parser, leaves):
    if argv in (["--version"], ["--help"]):
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 0
        return
    path, leaf = _leaf_for([a for a in argv if a not in ("--debug", "--quiet")], leaves)
    if SYNOPSIS.search(line):
        known = set(leaf._option_string_actions)
        synopsis = line.split("#", 1)[0]
        for token in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", synopsis):
            assert token in known, f"`volgan {path}` has no option {token}: {line}"
        # `--amp auto|bf16|fp16|off`, `[--kind bone]`: named values must be the option's choices
        for option, values in re.findall(r"(--[\w-]+)[ =]([a-z0-9][\w.+-]*(?:\|[\w.+-]+)*)", synopsis):
            choices = leaf._option_string_actions[option].choices
            if choices is not None:
                for value in values.split("|"):
                    assert value in choices, f"`volgan {path} {option}` has no choice {value!r}: {line}"
        return
    cut = [k for k, a in enumerate(argv) if a in SHELL_OPERATORS]   # `... --json > out.json`
    argv = argv[:cut[0]] if cut else argv
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"the parser refuses {line!r}: {err.getvalue().strip().splitlines()[-1]}") from None
    assert getattr(args, "func", None) is not None, line


def test_a_renamed_option_would_fail(parser, leaves):
    """The check itself: misspelt options, wrong choices, missing required options and unknown sub-commands fail."""
    good = shlex.split("train --preset tiny-cow --data d --out r --amp auto")
    parser.parse_args(good)
    for bad in ("train --preset tiny-cow --data d --out r --amp fast",
                "train --preset tiny-cow --data d --output r",
                "prepare bone --images d --out o --from-HU"):
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
            parser.parse_args(shlex.split(bad))
    assert "--from-hu" in leaves["prepare bone"]._option_string_actions
    for bad in ("volgan prepare bone --images v/ --out s/ --from-HU",          # concrete: parse_args refuses
                "volgan prepare cow --images a --out b",                      # a required alternative missing
                "volgan train --preset tiny-cow --data d --out r [--amp fast]",   # synopsis: not a choice
                "volgan steer --checkpoint m --target-value BV/TV=0.2 [--n N] --out o",   # synopsis: no such option
                "volgan prepare bones --images a --out b"):                   # no such sub-command
        with pytest.raises(AssertionError):
            test_doc_command_line_matches_the_parser(_volgan_argv(bad), bad, parser, leaves)


def _inline_commands():
    """`volgan ...` spans in the prose (outside code blocks) that name options."""
    out = []
    for path in DOCS:
        text = re.sub(r"^\s*```.*?^\s*```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
        for m in re.finditer(r"`(volgan [^`]+)`", text):
            if re.search(r"(?<![\w-])--[A-Za-z]", m.group(1)):
                out.append(pytest.param(m.group(1), id=f"{path.relative_to(ROOT)}:{m.group(1)[:40]}"))
    return out


@pytest.mark.parametrize("span", _inline_commands())
def test_inline_command_options_exist(span, parser, leaves):
    """Prose spans such as `volgan train --padding MODE`: the sub-command and each option named exist."""
    argv = span.split()[1:]
    path, leaf = _leaf_for([a for a in argv if a not in ("--debug", "--quiet")], leaves)
    known = set(leaf._option_string_actions) | set(parser._option_string_actions)
    for token in re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", span):
        assert token in known, f"`volgan {path}` has no option {token}: {span}"
