"""The docs say what the code does: every example in them goes through the real code.

Read from every Markdown file of the tree (README.md, PERFORMANCE.md, each part's README.md):

    ```toml       a config loads with `controller.host.config.load_config`, a plan with
                  `controller.plan_load.load_plan` (a block is a plan when it has [plan],
                  [[stages]], [[checkpoints]] or [[guards]]); a block with a `# fragment` line
                  is deliberately partial and need only be TOML
    ```json       parses as JSON, or as JSON Lines
    ```sh         every `rolloutctl ...` and `rolloutd ...` command (also `python -m
    ```console    controller.main|deploy` and `make demo DEMO_ARGS=...`) is parsed by the real
                  entry point's own argparse parser and names a command; nothing runs: the
                  parse is stopped the moment `parse_args` returns, before any socket or file
    links         every relative link points to a file that exists, and a `#fragment` to a
                  heading of that file
    BENCH_ARGS    every benchmark named after `make bench BENCH_ARGS=` is one tests/bench runs
    README.md     the front door stays short: at most 250 lines

A failure names the file and line of the example and what the code said about it.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller import main as rolloutd
from controller.host.config import load_config
from controller.plan_load import load_plan
from deploy import cli as rolloutctl

REPO = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {"__pycache__", "build", "bench-results", "rolloutd-demo", "node_modules"}
PLAN_TABLES = {"plan", "stages", "checkpoints", "guards"}
FRAGMENT = re.compile(r"(?m)^\s*#\s*fragment\b")
README_MAX_LINES = 250
SHELLS = {"sh", "shell", "bash", "console"}
CONTROL = {"|", "||", "&", "&&", ";", ";;", "(", ")"}
PREFIXES = {"sudo", "exec", "time", "env", "nohup"}


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its language and its text."""

    file: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def markdown_files() -> list[Path]:
    """Every Markdown file of the tree, leaving out hidden, generated and installed directories."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        found += [Path(root) / name for name in sorted(files) if name.endswith(".md")]
    return found


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one file (``` or ~~~, indented or not)."""
    found: list[Block] = []
    body: list[str] = []
    fence, start, lang = "", 0, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not fence:
            match = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, start, lang, body = match.group(1), number, match.group(2).lower(), []
        elif stripped.startswith(fence) and not stripped[len(fence) :].strip():
            found.append(Block(path, start, lang, "\n".join(body)))
            fence = ""
        else:
            body.append(line)
    return found


def prose(path: Path) -> str:
    """The file without its code blocks and inline code spans, line numbers kept."""
    lines, fence = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        opening = re.match(r"(`{3,}|~{3,})", stripped)
        if not fence and opening:
            fence, line = opening.group(1), ""
        elif fence:
            fence = "" if stripped.startswith(fence) and not stripped[len(fence) :].strip() else fence
            line = ""
        lines.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return "\n".join(lines)


def all_blocks(*langs: str) -> list[Block]:
    return [b for path in markdown_files() for b in blocks(path) if b.lang in langs]


def block_id(block: Block) -> str:
    return block.where


# -- TOML and JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block", all_blocks("toml"), ids=block_id)
def test_toml_example_loads_with_the_real_loader(block: Block, tmp_path: Path) -> None:
    """A TOML example is a config the daemon accepts or a plan the plan loader accepts, unless marked a fragment."""
    try:
        tables = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where}: not TOML: {exc}")
    if FRAGMENT.search(block.text):
        return
    example = tmp_path / "example.toml"
    example.write_text(block.text)
    problem = ""
    try:
        if PLAN_TABLES & tables.keys():
            load_plan(example)
        else:
            load_config(example)
    except ValueError as exc:  # PlanError and ConfigError, each listing what is wrong and where
        problem = str(exc).replace(str(example), block.where)
    assert not problem, f"{problem}\n(mark a deliberately partial example with a `# fragment` line)"


@pytest.mark.parametrize("block", all_blocks("json"), ids=block_id)
def test_json_example_parses(block: Block) -> None:
    """A JSON example is one JSON document, or JSON Lines."""
    try:
        json.loads(block.text)
    except json.JSONDecodeError:
        for number, line in enumerate(block.text.splitlines(), block.line + 1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as exc:
                pytest.fail(f"{block.where}: neither JSON nor JSON Lines (line {number}: {exc})")


# -- commands ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A `rolloutctl` or `rolloutd` invocation found in a shell block."""

    where: str
    shown: str
    program: str
    argv: list[str]


def commands_in(block: Block) -> list[Command]:
    """Every rolloutctl/rolloutd command of a shell block, through pipes, `&&`, `$(...)` and redirections."""
    found = []
    for line, text in logical_lines(block):
        for segment in segments(text):
            command = as_command(segment)
            if command:
                found.append(Command(f"{block.where} (line {line})", " ".join(segment), *command))
    return found


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """Physical lines joined across backslash continuations and open quotes; `$ ` prompts kept only."""
    found, pending, first = [], "", 0
    for number, line in enumerate(block.text.splitlines(), block.line + 1):
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not pending:
            first = number
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            tokens(pending)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        found.append((first, pending))
        pending = ""
    assert not pending, f"{block.where}: a command never ends (an unclosed quote?): {pending!r}"
    return found


def tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def segments(text: str) -> list[list[str]]:
    """Simple commands: split at control operators, redirections (and their targets) left out."""
    found: list[list[str]] = [[]]
    words = tokens(text)
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in CONTROL:
            found.append([])
        elif set(word) <= set("<>&") and set(word) & set("<>"):
            if found[-1] and found[-1][-1].isdigit():  # 2> names a descriptor, not an argument
                found[-1].pop()
            skip = True  # > FILE, >& 1: the next word is the redirection's target
        else:
            found[-1].append(word)
    return [s for s in found if s]


def as_command(words: list[str]) -> tuple[str, list[str]] | None:
    """(program, argv) when the simple command runs rolloutctl or rolloutd, else None."""
    while words and (re.match(r"[A-Za-z_]\w*=", words[0]) or words[0] in PREFIXES):
        words = words[1:]
    if not words:
        return None
    program, args = os.path.basename(words[0]), words[1:]
    if program in ("rolloutctl", "rolloutd"):
        return program, args
    if re.fullmatch(r"python[\d.]*", program) and args[:1] == ["-m"] and len(args) > 1:
        module = {
            "controller.main": "rolloutd",
            "controller": "rolloutd",
            "deploy": "rolloutctl",
            "deploy.cli": "rolloutctl",
        }.get(args[1])
        return (module, args[2:]) if module else None
    if program == "make" and "demo" in args:
        demo_args = [a.split("=", 1)[1] for a in args if a.startswith("DEMO_ARGS=")]
        return "rolloutd", ["demo", *shlex.split(demo_args[-1] if demo_args else "")]
    return None


ENTRY_POINTS: dict[str, Callable[[list[str]], Any]] = {"rolloutctl": rolloutctl.main, "rolloutd": rolloutd.main}
PARSE_ARGS = argparse.ArgumentParser.parse_args
COMMANDS = [c for b in all_blocks(*SHELLS) for c in commands_in(b)]


class Parsed(Exception):
    """Raised in place of returning from `parse_args`: the command line was accepted, and nothing ran."""

    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
        super().__init__(parser.prog)
        self.parser, self.namespace = parser, namespace


def parse_with_the_real_parser(
    program: str, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.ArgumentParser | None, str]:
    """Run the entry point until its parser has parsed `argv`: (parser, "") or (None, what argparse said)."""

    def stop_after_parsing(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise Parsed(self, PARSE_ARGS(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop_after_parsing)
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
        try:
            ENTRY_POINTS[program](argv)
        except Parsed as parsed:
            if program == "rolloutctl" and not {"run", "offline"} & vars(parsed.namespace).keys():
                return None, "no command named (e.g. `rolloutctl status`)"
            return parsed.parser, ""
        except SystemExit as exc:
            if exc.code == 0:  # --help, --version
                return None, ""
            return None, said.getvalue().strip() or f"exit {exc.code}"
    return None, "the entry point returned without parsing its command line"


def test_the_docs_show_commands() -> None:
    """The command check below has something to check: the docs show both programs."""
    assert {c.program for c in COMMANDS} == {"rolloutctl", "rolloutd"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where}: {c.shown}")
def test_documented_command_exists_with_its_options(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rolloutctl/rolloutd command line the docs show is one the real argparse parser accepts."""
    said = parse_with_the_real_parser(command.program, command.argv, monkeypatch)[1]
    assert not said, f"{command.where}: `{command.shown}` is refused:\n{said}"


def test_the_command_check_refuses_what_the_parsers_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """An option, a subcommand or a value the parsers do not know fails the check; what they know passes."""
    refused = [
        ("rolloutctl", ["status", "--verbose"]),
        ("rolloutctl", ["flags", "frobnicate"]),
        ("rolloutctl", ["rollback", "--to", "one", "--reason", "x"]),
        ("rolloutctl", ["--json"]),
        ("rolloutd", ["--config"]),
        ("rolloutd", ["demo", "--fast"]),
        ("rolloutd", ["replay", "--config", "x.toml", "--from", "yesterday"]),
    ]
    for program, argv in refused:
        assert parse_with_the_real_parser(program, argv, monkeypatch)[1], (program, argv)
    accepted = [
        ("rolloutctl", ["--socket", "/tmp/s", "report", "--html", "r.html"]),
        ("rolloutd", ["replay", "--config", "x.toml", "--from", "2025-10-23T09:00:00Z", "--json"]),
        ("rolloutd", ["demo", "--inject", "latency@30h"]),
        ("rolloutd", ["--config", "x.toml"]),
    ]
    for program, argv in accepted:
        assert parse_with_the_real_parser(program, argv, monkeypatch)[0] is not None, (program, argv)


def test_commands_are_found_through_pipes_redirections_and_prompts() -> None:
    """The shell reading finds a command after env assignments, in pipes and `$ ` prompts, without redirections."""
    block = Block(
        REPO / "README.md",
        1,
        "console",
        "\n".join(
            [
                "$ ROLLOUTD_SOCKET=/tmp/s rolloutctl watch --once | mail -s 'rollout' x@example.com",
                "output that is not a command: rolloutd --nonsense",
                "$ .venv/bin/rolloutd --config a.toml > log 2>&1 &",
                "$ rolloutctl flags set f \\",
                "    --percentage 5 --reason 'two",
                "lines'",
            ]
        ),
    )
    assert [(c.program, c.argv) for c in commands_in(block)] == [
        ("rolloutctl", ["watch", "--once"]),
        ("rolloutd", ["--config", "a.toml"]),
        ("rolloutctl", ["flags", "set", "f", "--percentage", "5", "--reason", "two\nlines"]),
    ]


# -- links -------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def anchors(path: Path) -> set[str]:
    """The fragment of every heading, as GitHub makes them (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    for line in prose_keeping_code_spans(path).splitlines():
        match = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def prose_keeping_code_spans(path: Path) -> str:
    """The file without its fenced code blocks (headings keep their `code` text)."""
    kept, fence = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        opening = re.match(r"(`{3,}|~{3,})", stripped)
        if not fence and opening:
            fence = opening.group(1)
        elif fence:
            fence = "" if stripped.startswith(fence) and not stripped[len(fence) :].strip() else fence
        else:
            kept.append(line)
    return "\n".join(kept)


def links(path: Path) -> list[tuple[int, str]]:
    return [
        (number, target) for number, line in enumerate(prose(path).splitlines(), 1) for target in LINK.findall(line)
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_files_that_exist(path: Path) -> None:
    """Every relative link reaches a file of the tree, and its #fragment a heading in that file."""
    broken = []
    for number, target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        goal = (REPO / file_part.lstrip("/")) if file_part.startswith("/") else (path.parent / file_part)
        goal = goal.resolve()
        if not goal.exists() or REPO not in (goal, *goal.parents):
            broken.append(f"{path.relative_to(REPO)}:{number}: {target}: no such file in the tree")
        elif fragment and goal.suffix == ".md" and fragment not in anchors(goal):
            broken.append(f"{path.relative_to(REPO)}:{number}: {target}: no heading #{fragment} there")
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_links_and_headings(tmp_path: Path) -> None:
    """Links outside code count, links inside code do not, and fragments are GitHub's heading slugs."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A `cmd --opt FILE`: title\n## Twice\n## Twice\nsee [x](other.md#y) and `[no](link.md)`\n"
        "```\n[not](a-link.md)\n```\n"
    )
    assert links(page) == [(4, "other.md#y")]
    assert anchors(page) == {"a-cmd---opt-file-title", "twice", "twice-1"}


# -- benchmarks and the front door --------------------------------------------------------------------


def benchmark_names() -> set[str]:
    """The names `python -m tests.bench` accepts: the keys of its BENCHMARKS table."""
    tree = ast.parse((REPO / "tests" / "bench" / "__main__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "BENCHMARKS" for t in targets):
                return {str(k.value) for k in node.value.keys if isinstance(k, ast.Constant)}
    raise AssertionError("tests/bench/__main__.py has no BENCHMARKS table")


def test_documented_benchmarks_exist() -> None:
    """Every `BENCH_ARGS=...` in the docs names benchmarks that `make bench` runs."""
    known = benchmark_names()
    shown = [
        (path, match.group(1) or match.group(2))
        for path in markdown_files()
        for match in re.finditer(r"BENCH_ARGS=(?:\"([^\"]*)\"|([\w-]+))", path.read_text())
    ]
    assert shown, "no BENCH_ARGS in the docs: where did the performance page go?"
    unknown = [f"{path.relative_to(REPO)}: {names}" for path, names in shown if set(names.split()) - known]
    assert not unknown, f"not benchmarks ({', '.join(sorted(known))}):\n" + "\n".join(unknown)


def test_the_readme_is_a_front_door() -> None:
    """README.md stays short: what rolloutd is, two commands, a tour and links; references live beside their code."""
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
