"""Hostile and broken inputs for the inbox and for trainctl enqueue, from a seed.

Shared by tests/test_chaos_input.py (a quick run) and bench/chaos_inbox.py (a long one).
Every input is one directory entry: a regular file with awkward bytes, an awkward name, or
both, or something that is not a regular file at all (a symlink, a fifo, a device, a
directory, a socket) and must never be read or block anything.
"""

from __future__ import annotations

import os
import random
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import orjson

VALID_RECORDS = (
    {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4."}]},
    {"text": "The river runs past the stone."},
    {"prompt": "Reverse: a b\n", "completion": "b a"},
)


def _valid_lines(rng: random.Random, count: int) -> bytes:
    return b"".join(orjson.dumps(rng.choice(VALID_RECORDS)) + b"\n" for _ in range(count))


def _huge_line(size: int) -> bytes:
    # One record whose single line is `size` bytes: valid JSON, far over max_line_bytes.
    return b'{"text": "' + b"a" * max(0, size - 13) + b'"}\n'


# Each maker returns (content, whether the validator must accept it).
def _valid(rng, huge):
    return _valid_lines(rng, rng.randint(1, 3)), True


def _random_bytes(rng, huge):
    return rng.randbytes(rng.randint(1, 4096)), False


def _invalid_utf8(rng, huge):
    return b'{"text": "caf\xe9 \xff\xfe"}\n', False


def _bom(rng, huge):
    return b"\xef\xbb\xbf" + _valid_lines(rng, 2), True


def _crlf(rng, huge):
    return _valid_lines(rng, 3).replace(b"\n", b"\r\n"), True


def _deep_nesting(rng, huge):
    depth = rng.choice([1_100, 100_000])
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}\n", False


def _numbers_for_strings(rng, huge):
    return rng.choice([
        b'{"text": 12345}\n',
        b'{"prompt": 1, "completion": 2.5}\n',
        b'{"messages": [{"role": 1, "content": 2}]}\n',
        b'{"messages": [{"role": "assistant", "content": 1e308}]}\n',
        b'{"text": 1e999}\n',
    ]), False


def _not_an_object(rng, huge):
    return rng.choice([b"[]\n", b'"text"\n', b"null\n", b"true\n", b"42\n"]), False


def _nul_bytes(rng, huge):
    return b'{"text": "a\x00b"}\n\x00\x00\x00\n', False


def _escaped_nul(rng, huge):
    # JSON-escaped control characters are valid JSON strings: accepted, and must train.
    return b'{"text": "a\\u0000b\\u001b[31m red"}\n', True


def _lone_surrogate(rng, huge):
    return b'{"text": "\\ud800"}\n', False


def _empty(rng, huge):
    return b"", False


def _blank_lines(rng, huge):
    return b"\n \r\n\t\n", False


def _no_final_newline(rng, huge):
    return _valid_lines(rng, 2).rstrip(b"\n"), True


def _huge_single_line(rng, huge):
    return _huge_line(huge), False


def _mixed(rng, huge):
    return _valid_lines(rng, 2) + b"{not json}\n" + _valid_lines(rng, 1), False


CONTENTS = {
    "valid": _valid, "random-bytes": _random_bytes, "invalid-utf8": _invalid_utf8, "bom": _bom,
    "crlf": _crlf, "deep-nesting": _deep_nesting, "numbers-for-strings": _numbers_for_strings,
    "not-an-object": _not_an_object, "nul-bytes": _nul_bytes, "escaped-nul": _escaped_nul,
    "lone-surrogate": _lone_surrogate, "empty": _empty, "blank-lines": _blank_lines,
    "no-final-newline": _no_final_newline, "huge-line": _huge_single_line, "mixed": _mixed,
}

NAMES = {
    "plain": "data{n}.jsonl",
    "spaces": "my training data {n}.jsonl",
    "newline": "two\nlines{n}.jsonl",
    "unicode": "données-日本語-🙂-{n}.jsonl",
    "right-to-left": "\u202egnp{n}.jsonl",
    "terminal-escape": "\x1b[31mred\x1b[0m{n}.jsonl",
    "leading-dash": "-rf{n}.jsonl",
    "double-dash": "--help{n}",
    "not-utf8": os.fsdecode(b"caf\xe9-{n}.jsonl"),
    "long": "x" * 230 + "{n}.jsonl",
    "no-extension": "data{n}",
}


@dataclass(frozen=True)
class Input:
    """One entry made in a directory."""

    name: str
    kind: str  # a CONTENTS key, or one of SPECIAL_KINDS
    name_kind: str
    valid: bool  # regular files: whether the validator must accept it
    regular: bool  # a regular file (to be taken and judged) or something never to be read


SPECIAL_KINDS = ("symlink-outside", "symlink-dev-zero", "dangling-symlink", "symlink-to-dir",
                 "hard-link-outside", "fifo", "char-device", "directory", "socket")


def make_regular(directory: Path, rng: random.Random, n: int, huge_line: int) -> Input:
    """A regular file with hostile content and/or a hostile name; the first inputs of a run
    go through every kind of content and of name in turn, so that even a short run has each."""
    kind = list(CONTENTS)[n] if n < len(CONTENTS) else rng.choice(list(CONTENTS))
    name_kind = list(NAMES)[n % len(NAMES)] if n < len(CONTENTS) else rng.choice(list(NAMES))
    name = NAMES[name_kind].format(n=n)
    content, valid = CONTENTS[kind](rng, huge_line)
    with open(directory / name, "wb") as fh:
        fh.write(content)
    return Input(name, kind, name_kind, valid, regular=True)


def make_special(directory: Path, outside: Path, kind: str, n: int) -> Input:
    """An entry that is not a regular file of the inbox's own (or, for a hard link, one
    that shares its inode with a file outside): ``outside`` holds the targets."""
    name = f"{kind}-{n}.jsonl"
    path = directory / name
    target = outside / f"target-{n}.jsonl"
    target.write_bytes(b'{"text": "a file outside the base dir"}\n')
    if kind == "symlink-outside":
        os.symlink(target, path)
    elif kind == "symlink-dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "dangling-symlink":
        os.symlink(outside / "nothing-here", path)
    elif kind == "symlink-to-dir":
        os.symlink(outside, path)
    elif kind == "hard-link-outside":
        os.link(target, path)
        return Input(name, kind, "plain", valid=True, regular=True)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "char-device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
    elif kind == "directory":
        path.mkdir()
        (path / "inside.jsonl").write_bytes(b'{"text": "inside a directory"}\n')
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.close()
    else:
        raise ValueError(kind)
    return Input(name, kind, "plain", valid=False, regular=False)


def special_kinds_possible() -> tuple[str, ...]:
    """Device nodes need root (CAP_MKNOD); everything else any user can make."""
    return SPECIAL_KINDS if os.geteuid() == 0 else tuple(k for k in SPECIAL_KINDS if k != "char-device")


def fingerprint(path: Path) -> tuple:
    """What must not change about an entry that is never to be read: its type, inode, link
    target and (for the targets outside) its bytes."""
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return (stat.S_IFMT(st.st_mode), st.st_ino, link)
