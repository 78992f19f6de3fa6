"""Every `trainctl ...` the code can print as advice parses as printed.

The hints are found in the source (every string literal and f-string in trainer/ and ctl/
that is not a docstring), cut where the command ends, their placeholders filled with a real
base dir, item and file, and parsed by the real command line, with the commands' bodies
replaced by no-ops (parsing includes resolving the item id against the real spool). A hint
such as ``trainctl init --base-dir X`` (the option after the command) fails here.
"""

from __future__ import annotations

import ast
import re

import click
import pytest
from helpers.common import REPO

from ctl import cli as cli_module
from trainer.intake import enqueue

PLACEHOLDER = re.compile(r"^(\{[A-Z]+\}|[A-Z][A-Z_]*(\.jsonl)?|%[sdr])$")  # {ID}, ID, FILE.jsonl, N, %s
WORD = re.compile(r"^[-\w./{}='%]+$")


def _template(node: ast.AST) -> str | None:
    """A string literal as text; an f-string with each {expression} named by what it holds."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                source = ast.unparse(value.value).lower()
                parts.append("{ID}" if "id" in source else "{BASE}" if "root" in source or "base" in source
                             else "{X}")
        return "".join(parts)
    return None


def _skipped(tree: ast.AST) -> set[int]:
    """Docstrings, and the literal parts inside f-strings (the f-string is read whole)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found.update(id(value) for value in node.values)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _cut(words: list[str]) -> list[str]:
    """The words that belong to the command: global options, the command, then its options,
    values and placeholder arguments, up to the first word of prose or closing punctuation."""
    out: list[str] = []
    command: click.Command | None = None
    takes_value = False
    for raw in words:
        word = raw.rstrip("`.,;:)'\"")
        ended = word != raw
        if not word or not WORD.match(word):
            break
        if takes_value:
            out.append(word)
            takes_value = False
        elif word.startswith("-"):
            out.append(word)
            owner = command or cli_module.cli
            option = next((p for p in owner.params if word in getattr(p, "opts", [])), None)
            takes_value = option is not None and not getattr(option, "is_flag", False) and option.nargs == 1
        elif command is None:
            if word.startswith("{"):
                return []  # a command built at run time (the demo echoing what it runs): no hint
            out.append(word)
            command = cli_module.cli.get_command(click.Context(cli_module.cli), word)
            if command is None:
                break  # not a command: the parse below says so
        elif PLACEHOLDER.match(word) or (word.startswith("/") and len(word) > 1):
            out.append(word)
        else:
            break
        if ended:
            break
    return out


def printed_hints() -> list[tuple[str, str]]:
    """(where, hint) for every `trainctl COMMAND...` in a string the code can print."""
    hints = []
    for path in sorted([*REPO.glob("trainer/**/*.py"), *REPO.glob("ctl/**/*.py")]):
        tree = ast.parse(path.read_text())
        docs = _skipped(tree)
        for node in ast.walk(tree):
            if id(node) in docs:
                continue
            text = _template(node)
            if not text or "trainctl " not in text:
                continue
            for match in re.finditer(r"trainctl ((?:\S+ ?)+)", text):
                words = _cut(match.group(1).split())
                if words:
                    hints.append((f"{path.relative_to(REPO)}:{node.lineno}", " ".join(words)))
    return sorted(set(hints))


HINTS = printed_hints()


def test_the_hints_were_found():
    found = {hint for _, hint in HINTS}
    assert any(h.startswith("--base-dir {BASE} init") for h in found), found
    assert any(h.startswith("retry {ID}") for h in found), found
    assert len(HINTS) >= 10


@pytest.mark.parametrize("where,hint", HINTS, ids=[f"{w} trainctl {h}" for w, h in HINTS])
def test_a_printed_hint_parses_as_printed(where, hint, layout, limits, chat_file, monkeypatch):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    values = {"{ID}": item_id, "ID": item_id, "ITEM": item_id, "ITEM_ID": item_id, "{BASE}": str(layout.root), "FILE.jsonl": str(chat_file()),
              "FILE": str(chat_file()), "{X}": "x", "N": "1", "%s": "x", "%d": "1", "%r": "x"}
    args = [values.get(word, word) for word in hint.split()]
    if args[0] != "--base-dir":
        args = ["--base-dir", str(layout.root), *args]
    ran = []
    real_get = cli_module.LazyGroup.get_command

    def no_op_command(self, ctx, name):
        command = real_get(self, ctx, name)
        if command is not None:
            monkeypatch.setattr(command, "callback", lambda *a, **k: ran.append(name))
        return command

    monkeypatch.setattr(cli_module.LazyGroup, "get_command", no_op_command)
    try:
        cli_module.cli.main(args=args, prog_name="trainctl", standalone_mode=False)
    except click.UsageError as exc:
        pytest.fail(f"{where}: `trainctl {hint}` does not parse: {exc.format_message()}")
    assert ran, f"{where}: `trainctl {hint}` ran no command"
