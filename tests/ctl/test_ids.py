"""Short ids like git's: any unique prefix of an id's random part names the item, everywhere
an ITEM_ID is taken; shell completion offers them."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from helpers.common import REPO, trainctl

from trainer.errors import AmbiguousId, NoSuchItem
from trainer.exitcodes import ExitCode
from trainer.intake import enqueue
from trainer.spool import names, queue
from trainer.states import ItemState


def _queue_with_ids(layout, chat_file, limits, randoms: list[str]) -> list[str]:
    """Items whose ids end in the given random parts (renamed after a real enqueue)."""
    ids = []
    for random in randoms:
        item = queue.find(layout, enqueue.enqueue(layout, chat_file(), limits=limits).id)
        wanted = f"{item.id[:-8]}{random}"
        meta = orjson.loads(item.meta_path.read_bytes())
        meta["id"] = wanted
        item.meta_path.write_bytes(orjson.dumps(meta))
        os.rename(item.path, item.path.parent / wanted)
        ids.append(wanted)
    return ids


def test_short_forms_are_the_shortest_unique_prefix_of_at_least_four():
    ids = ["20261128T194440.123456Z-3fa9c1b2", "20261128T194441.123456Z-3fa9d000",
           "20261128T194442.123456Z-77777777"]
    assert names.short_forms(ids) == {ids[0]: "3fa9c", ids[1]: "3fa9d", ids[2]: "7777"}


def test_any_unique_prefix_names_the_item_and_an_ambiguous_one_lists_them(layout, chat_file, limits):
    ids = _queue_with_ids(layout, chat_file, limits, ["3fa9c1b2", "3fa9d000", "77777777"])
    assert names.resolve(layout, "7") == ids[2]
    assert names.resolve(layout, "3fa9c") == ids[0]
    assert names.resolve(layout, ids[1]) == ids[1]
    with pytest.raises(AmbiguousId) as ambiguous:
        names.resolve(layout, "3fa9")
    assert "3fa9c1b2 (pending)" in str(ambiguous.value) and "3fa9d000 (pending)" in str(ambiguous.value)
    with pytest.raises(NoSuchItem):
        names.resolve(layout, "abcd")
    with pytest.raises(NoSuchItem):
        names.resolve(layout, "../etc")


def test_every_item_command_takes_a_short_id(layout, chat_file, limits):
    ids = _queue_with_ids(layout, chat_file, limits, ["3fa9c1b2", "3fa9d000", "77777777"])
    root = layout.root
    assert trainctl(root, "hold", "777").returncode == 0
    assert queue.find(layout, ids[2]).state is ItemState.HELD
    assert trainctl(root, "move", "777", "--priority", "low").returncode == 0
    assert trainctl(root, "release", "7777").returncode == 0
    shown = orjson.loads(trainctl(root, "show", "3fa9d", "--json").stdout)
    assert shown["item"]["id"] == ids[1]
    history = orjson.loads(trainctl(root, "history", "--id", "777", "--json").stdout)["events"]
    assert {e["id"] for e in history} == {ids[2]}
    assert trainctl(root, "remove", "3fa9c").returncode == 0
    assert [i.id for i in queue.list_items(layout, list(ItemState))] == [ids[1], ids[2]]


def test_an_ambiguous_prefix_is_one_line_naming_the_candidates_with_the_usage_exit_code(layout, chat_file, limits):
    _queue_with_ids(layout, chat_file, limits, ["3fa9c1b2", "3fa9d000"])
    result = trainctl(layout.root, "show", "3fa")
    assert result.returncode == ExitCode.USAGE
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "3fa9c1b2" in result.stderr and "3fa9d000" in result.stderr
    missing = trainctl(layout.root, "show", "0000")
    assert missing.returncode == ExitCode.NO_SUCH_ITEM and "trainctl list --all" in missing.stderr


def test_list_shows_the_short_ids_that_name_the_items(layout, chat_file, limits):
    ids = _queue_with_ids(layout, chat_file, limits, ["3fa9c1b2", "3fa9d000", "77777777"])
    rows = trainctl(layout.root, "list").stdout.splitlines()
    assert rows[0].split()[0] == "ID"
    assert [row.split()[0] for row in rows[1:]] == ["3fa9c", "3fa9d", "7777"]
    full = trainctl(layout.root, "list", "-v").stdout.splitlines()
    assert [row.split()[0] for row in full[1:]] == ids
    listed = orjson.loads(trainctl(layout.root, "list", "--json").stdout)["items"]
    assert [i["short_id"] for i in listed] == ["3fa9c", "3fa9d", "7777"]


def _complete(shell: str, words: str, cword: int | None = None, root=None) -> str:
    env = {**os.environ, "_TRAINCTL_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(cword) if cword is not None else words.split()[-1]}
    result = subprocess.run([sys.executable, "-m", "ctl"], env=env, capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_shell_completion_completes_commands_and_item_ids_in_bash_zsh_and_fish(layout, chat_file, limits):
    _queue_with_ids(layout, chat_file, limits, ["3fa9c1b2", "3fa9d000", "77777777"])
    base = str(layout.root)
    bash = _complete("bash", f"trainctl --base-dir {base} show 3fa", 4)
    assert bash.split() == ["plain,3fa9c1b2", "plain,3fa9d000"]
    assert "plain,status" in _complete("bash", f"trainctl --base-dir {base} st", 3).split()
    zsh = _complete("zsh", f"trainctl --base-dir {base} hold 7", 4)
    assert zsh.splitlines() == ["plain", "77777777", "pending"]
    fish = _complete("fish", f"trainctl --base-dir {base} remove 3fa9d")
    assert fish.split("\t")[0] == "plain,3fa9d000" and "pending" in fish
    for shell in ("bash", "zsh", "fish"):
        script = subprocess.run([sys.executable, "-m", "ctl"], env={**os.environ, "_TRAINCTL_COMPLETE": f"{shell}_source"},
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert script.returncode == 0 and "_TRAINCTL_COMPLETE" in script.stdout, (shell, script.stderr)
