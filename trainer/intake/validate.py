"""Streaming validation of JSONL training files.

A file is read in chunks and checked line by line, so a 10 GB upload costs one chunk of memory,
not 10 GB. The same pass hashes every byte, which lets enqueue copy a file into the spool while
validating it: what was checked is exactly what was queued.

What a line must hold (one JSON object in one of the record formats) is decided in
trainer.intake.formats; this module finds the lines, parses them, holds the file to one format
(the first record's; see formats' `shares_files` for the exception) and reports. Asked to,
the same pass takes a digest of every record, for the count of records seen before
(trainer.intake.seen).

This is a leaf module: stdlib and orjson only, so trainctl can use it without importing torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import orjson

from trainer.intake.formats import (  # noqa: F401
    EXPECTED_SHAPES,
    FORMATS,
    Format,
    diagnose,
    fast_check_for,
    may_share_a_file,
    mixed_problem,
    plainly_valid,
    record_problem,
)

# Under the names tests/test_validate.py imports (with EXPECTED_SHAPES) and holds to its
# plain reference of the formats.
_plainly_valid, _record_problem = plainly_valid, record_problem

MAX_PROBLEMS_LISTED = 20
"""How many problems a Report keeps; the rest are only counted (a broken 1 GB file would
otherwise produce millions)."""

CHUNK_SIZE = 1 << 20
"""Bytes per read: large enough that per-chunk overhead vanishes, small enough that memory
stays flat however big the file is."""

DIGESTED_RECORDS = 1_000_000
"""Records per file whose digests are taken (8 bytes each, so at most 8 MB): repeats are
counted over the first this many records of a larger file (the
lookup holds them as a set, ~100 bytes each)."""

_BOM = b"\xef\xbb\xbf"
# JSON's own whitespace; bytes.strip() would also drop \v and \f, which JSON rejects.
_JSON_SPACE = b" \t\r"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a file cannot be trained on."""

    line: int
    """1-based line number; 0 for problems with the whole file."""
    reason: str
    """What is wrong, phrased so the person who wrote the file can fix it."""


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of validating one file."""

    records: int
    """Valid training records."""
    size: int
    """Bytes read (for an oversized file, where reading stopped)."""
    sha256: str
    """Hex digest of the bytes read."""
    problems: tuple[Problem, ...]
    """The first MAX_PROBLEMS_LISTED problems, whole-file problems first."""
    problem_count: int
    """All problems found, listed or not."""
    formats: tuple[str, ...] = ()
    """The formats of the valid records, in the table's order (one, but for a file mixing the
    formats that may share one)."""
    digests: bytes | None = None
    """With record_digests: 8 bytes per valid record (the start of the sha256 of its line),
    for the first DIGESTED_RECORDS records."""

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def describe(self, name: str) -> list[str]:
        """The problems as 'NAME:LINE: REASON' lines, the compiler-style format editors can jump to."""
        lines = [
            f"{name}:{p.line}: {p.reason}" if p.line else f"{name}: {p.reason}"
            for p in self.problems
        ]
        left_out = self.problem_count - len(self.problems)
        if left_out:
            lines.append(f"... and {left_out} more problem{'s' if left_out > 1 else ''}")
        return lines


class Validator:
    """Incremental validator: feed() chunks in order, then finish().

    Memory stays under about max_line_bytes + one chunk: only the unfinished last line is kept
    between chunks, and once that exceeds max_line_bytes it is dropped and the rest of the line
    skipped up to its newline.
    """

    def __init__(self, *, max_line_bytes: int, max_file_bytes: int, record_digests: bool = False) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"spool.max_line_bytes must be at least 1, got {max_line_bytes}")
        if max_file_bytes < 0:
            raise ValueError(f"spool.max_file_bytes must not be negative, got {max_file_bytes}")
        self._max_line_bytes = max_line_bytes
        self._max_file_bytes = max_file_bytes
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._records = 0
        self._lines_done = 0
        self._pending: list[bytes] = []  # pieces of the unfinished line, joined once it ends
        self._pending_size = 0
        self._skipping_long_line = False
        self._bom_skipped = False
        self._over_size = False
        self._problems: list[Problem] = []
        self._problem_count = 0
        self._format: Format | None = None  # the first valid record's, which the file must keep
        self._format_line = 0
        self._fast = None  # formats.fast_check_for(self._format): the formats that may share the file
        self._fast_alone = None  # the same for the file's own format only: the common case, faster
        self._formats_seen: dict[int, None] = {}  # FORMATS index + 1
        self._refused_listed: set[str] = set()
        self._digests = bytearray() if record_digests else None

    def feed(self, chunk: bytes) -> bool:
        """Check the next chunk; False once the file is over max_file_bytes (stop reading).

        Bytes fed after that are ignored.
        """
        if self._over_size:
            return False
        self._sha256.update(chunk)
        self._size += len(chunk)
        excess = self._size - self._max_file_bytes
        if excess > 0:
            self._over_size = True
            chunk = chunk[: len(chunk) - excess]
        self._split(chunk)
        return not self._over_size

    def finish(self) -> Report:
        """Check the last line (which may lack its newline) and report."""
        if self._pending and not self._over_size:
            # A line cut by the size limit is not checked: its problem is the size, not the JSON.
            self._check_line(self._lines_done + 1, b"".join(self._pending))
        self._pending.clear()
        self._pending_size = 0

        file_problems = []
        if self._size == 0:
            file_problems.append(Problem(0, "file is empty"))
        elif self._over_size:
            file_problems.append(Problem(0, (
                f"file is larger than the limit of {self._max_file_bytes} bytes "
                "(spool.max_file_bytes); split it or raise the limit")))
        elif self._records == 0 and self._problem_count == 0:
            file_problems.append(Problem(0, "file has no records, only blank lines"))
        # Whole-file problems go first so the cap never hides them behind line problems.
        listed = (file_problems + self._problems)[:MAX_PROBLEMS_LISTED]
        return Report(
            records=self._records,
            size=self._size,
            sha256=self._sha256.hexdigest(),
            problems=tuple(listed),
            problem_count=self._problem_count + len(file_problems),
            formats=tuple(FORMATS[kind - 1].name for kind in sorted(self._formats_seen)),
            digests=bytes(self._digests) if self._digests is not None else None,
        )

    def _split(self, chunk: bytes) -> None:
        # No line can be longer than the chunk plus the start of its first line carried over.
        may_be_too_long = self._pending_size + len(chunk) > self._max_line_bytes
        parts = chunk.split(b"\n")
        tail = parts.pop()  # after the last newline: the start of an unfinished line
        if parts:
            if self._skipping_long_line:
                # The overlong line ends at this newline; it was reported when it got too long.
                self._skipping_long_line = False
                self._lines_done += 1
                del parts[0]
            elif self._pending:
                self._pending.append(parts[0])
                parts[0] = b"".join(self._pending)
                self._pending.clear()
                self._pending_size = 0
            self._check_lines(self._lines_done + 1, parts, may_be_too_long)
            self._lines_done += len(parts)
        if tail and not self._skipping_long_line:
            self._pending.append(tail)
            self._pending_size += len(tail)
            if self._pending_size > self._max_line_bytes:
                self._add(self._lines_done + 1, self._too_long())
                self._pending.clear()
                self._pending_size = 0
                self._skipping_long_line = True

    def _check_lines(self, first: int, lines: list[bytes], may_be_too_long: bool) -> None:
        """Check lines numbered from first on; may_be_too_long: whether any could be over the limit.

        All at once when they are all fine; otherwise (rarely: the file has problems) one by
        one from the first, parsing again those the fast pass had got through. Until the first
        record has said which format the file holds, one by one.
        """
        while self._fast is None and lines:
            self._check_line(first, lines[0])
            first, lines = first + 1, lines[1:]
        if not lines:
            return
        too_long = may_be_too_long and max(map(len, lines), default=0) > self._max_line_bytes
        kinds = None
        if not too_long and self._fast_alone is not None:
            # A file of one format (nearly all): the single test, without collecting kinds.
            if _all_fast(lines, self._fast_alone):
                kinds = {FORMATS.index(self._format) + 1}
            elif self._fast is not self._fast_alone:
                # The older formats mixed: from here on, the test that says which is which.
                self._fast_alone = None
        if kinds is None and not too_long and self._fast_alone is None:
            kinds = _fast_kinds(lines, self._fast)
        if kinds is not None and 0 not in kinds:
            self._records += len(lines) - lines.count(b"")
            self._formats_seen.update(dict.fromkeys(kinds))
            if self._digests is not None:
                self._digest(filter(None, lines))
            return
        for number, line in enumerate(lines, first):
            self._check_line(number, line)

    def _check_line(self, number: int, line: bytes) -> None:
        # One parse and one quick shape check; diagnosis only when something is wrong.
        if len(line) > self._max_line_bytes:
            self._add(number, self._too_long())
            return
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            self._check_unparsable_line(number, line, error)
            return
        kind = self._fast(record) if self._fast is not None else 0
        if kind:
            self._accept(kind, line)
            return
        fmt, reason = diagnose(record)
        if reason is not None:
            if fmt is not None and fmt.normalise is None:
                self._refuse(number, fmt, reason)
            else:
                self._add(number, reason)
        elif self._format is None:
            self._format, self._format_line = fmt, number
            self._fast = fast_check_for(fmt)
            self._fast_alone = fast_check_for(fmt, alone=True)
            self._accept(FORMATS.index(fmt) + 1, line)
        elif may_share_a_file(self._format, fmt):
            self._accept(FORMATS.index(fmt) + 1, line)
        else:
            self._add(number, mixed_problem(fmt, record, self._format, self._format_line))

    def _accept(self, kind: int, line: bytes) -> None:
        self._records += 1
        self._formats_seen[kind] = None
        if self._digests is not None:
            self._digest((line,))  # a BOM was cut off before this parse

    def _digest(self, lines) -> None:
        if len(self._digests) < DIGESTED_RECORDS * 8:
            self._digests += b"".join(map(_line_digest, lines))
            del self._digests[DIGESTED_RECORDS * 8:]

    def _refuse(self, number: int, fmt: Format, reason: str) -> None:
        """A record of a format that is recognised only to be refused: listed once per file
        (a file of them is one problem to fix, not one per line), every one counted."""
        if fmt.name in self._refused_listed:
            self._problem_count += 1
            return
        self._refused_listed.add(fmt.name)
        self._add(number, reason)

    def _check_unparsable_line(self, number: int, line: bytes, error: orjson.JSONDecodeError) -> None:
        if number == 1 and not self._bom_skipped and line.startswith(_BOM):
            # Editors on Windows write a BOM; orjson refuses it, so drop it (once) and parse again.
            self._bom_skipped = True
            self._check_line(number, line[len(_BOM):])
            return
        if not line.strip(_JSON_SPACE):
            return  # blank lines separate nothing and hurt nothing
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            self._add(number, (
                f"invalid UTF-8 at byte {bad.start + 1} of the line; "
                "save the file as UTF-8"))
            return
        self._add(number, f"invalid JSON: {error.msg} (column {error.colno})")

    def _too_long(self) -> str:
        return (f"line is longer than the limit of {self._max_line_bytes} bytes "
                "(spool.max_line_bytes)")

    def _add(self, line: int, reason: str) -> None:
        self._problem_count += 1
        if len(self._problems) < MAX_PROBLEMS_LISTED:
            self._problems.append(Problem(line, reason))


def _all_fast(lines: list[bytes], fast_check) -> bool:
    """The hot path of a file of one format: a fast yes when every line is a valid record of it
    or blank, as most are. Parsing and the fast check are chained maps, so no Python loop runs
    per line: on short lines (~0.5 us each) the loop and its method call cost about a tenth of
    the time. False means "look closer" (a problem, a BOM, a CRLF blank line), not "invalid"."""
    records = filter(None, lines) if b"" in lines else lines
    try:
        return all(map(fast_check, map(orjson.loads, records)))
    except orjson.JSONDecodeError:
        return False


def _fast_kinds(lines: list[bytes], fast_check) -> set[int] | None:
    """The hot path of a file mixing the older formats: the formats (FORMATS index + 1) of a
    chunk's lines when every one is plainly a valid record that may share the file, or blank;
    0 among them, or None (a line that does not parse) means "check them one by one"."""
    records = filter(None, lines) if b"" in lines else lines
    try:
        return set(map(fast_check, map(orjson.loads, records)))
    except orjson.JSONDecodeError:
        return None


def _line_digest(line: bytes) -> bytes:
    """A record's identity for counting repeats: the start of the sha256 of its line, without
    the whitespace JSON ignores at its ends (a CRLF file's records match an LF file's)."""
    return _sha256(line.strip(_JSON_SPACE)).digest()[:8]


_sha256 = hashlib.sha256


def validate_stream(
    read: Callable[[int], bytes],
    *,
    max_line_bytes: int,
    max_file_bytes: int,
    sink: Callable[[bytes], object] | None = None,
    chunk_size: int = CHUNK_SIZE,
    record_digests: bool = False,
) -> Report:
    """Validate what read(n) returns until it returns b"", passing each chunk to sink too.

    Reads never ask for more than one byte past max_file_bytes, so an oversized file costs
    (and sink receives) at most max_file_bytes + 1 bytes.
    """
    validator = Validator(max_line_bytes=max_line_bytes, max_file_bytes=max_file_bytes,
                          record_digests=record_digests)
    taken = 0
    while True:
        chunk = read(min(chunk_size, max_file_bytes + 1 - taken))
        if not chunk:
            break
        taken += len(chunk)
        if sink is not None:
            sink(chunk)
        if not validator.feed(chunk):
            break
    return validator.finish()


def validate_path(path: str | os.PathLike, *, max_line_bytes: int, max_file_bytes: int) -> Report:
    """Validate the file at path."""
    # Unbuffered: the chunks are already large, and a buffer would copy every byte once more.
    with open(path, "rb", buffering=0) as file:
        return validate_stream(file.read, max_line_bytes=max_line_bytes,
                               max_file_bytes=max_file_bytes)
