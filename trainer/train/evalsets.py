"""What is evaluated: each item's held-out share, the named eval sets, the sample prompts.

Torch-free. A record is identified by the hash of its canonical JSON (keys sorted), so the
same record written with other spacing or key order is the same record. That hash alone
decides whether a record is held out of training: no random state, the same records after
any restart, and two copies of one record always fall on the same side (an item's held-out
share can never also be in its training share).

    BASE/eval/NAME.jsonl     a named eval set (any record format trainctl enqueue accepts)
    BASE/eval/prompts.jsonl  sample prompts ({"prompt": ...} or {"messages": [...]}), answered
                             greedily at each evaluation
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from trainer.config import SpoolConfig
from trainer.intake.validate import validate_path
from trainer.spool.layout import Layout

log = logging.getLogger("trainer.eval")

HOLDOUT = "holdout"
PROMPTS = "prompts"
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def record_key(record: object) -> bytes:
    """The record's identity: sha256 of its canonical JSON."""
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).digest()


def is_held_out(key: bytes, fraction: float) -> bool:
    """Whether the record with this key is held out of training (the first 8 bytes of the hash,
    read as a number in [0, 1), below ``fraction``)."""
    return fraction > 0 and int.from_bytes(key[:8], "big") < fraction * 2 ** 64


def read_records(path: Path) -> Iterator[dict]:
    """A JSONL file's records in order (blank lines and a leading BOM are not records)."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh):
            if number == 0 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if line.strip():
                yield orjson.loads(line)


def holdout_records(path: Path, fraction: float) -> list[dict]:
    return [r for r in read_records(path) if is_held_out(record_key(r), fraction)]


def training_keys(path: Path, fraction: float) -> set[bytes]:
    """Keys of the records an item trains on (everything not held out)."""
    keys = (record_key(r) for r in read_records(path))
    return {k for k in keys if not is_held_out(k, fraction)}


@dataclass(frozen=True)
class EvalSet:
    name: str
    records: list[dict]
    sha256: str  # of the file (named sets) or of the records' keys in order (the holdout pool)
    contaminated: int = 0  # records dropped because training data holds them too


def eval_dir(root: Path) -> Path:
    return Layout(root).eval_dir


def set_sha256(records: Iterable[dict]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record_key(record))
    return digest.hexdigest()


def named_sets(root: Path, spool: SpoolConfig) -> list[EvalSet]:
    """The valid eval sets in ``BASE/eval/``, by name; an invalid one is logged and left out."""
    found = []
    directory = eval_dir(root)
    try:
        names = sorted(n for n in (p.name for p in directory.iterdir()) if n.endswith(".jsonl"))
    except FileNotFoundError:
        return []
    for file_name in names:
        name = file_name[: -len(".jsonl")]
        if name in (HOLDOUT, PROMPTS) or not _SET_NAME.fullmatch(name):
            if name != PROMPTS:
                log.warning("eval/%s: not an eval set name (letters, digits, . _ -; not %r)", file_name, HOLDOUT)
            continue
        report = validate_path(directory / file_name, max_line_bytes=spool.max_line_bytes,
                               max_file_bytes=spool.max_file_bytes)
        if not report.ok:
            log.warning("eval set %s left out: %s", name, "; ".join(report.describe(file_name)[:3]))
            continue
        found.append(EvalSet(name, list(read_records(directory / file_name)), report.sha256))
    return found


def prompts(root: Path, limit: int) -> list[dict]:
    """The first ``limit`` sample prompts: records with a "prompt" string or a "messages" list."""
    path = eval_dir(root) / f"{PROMPTS}.jsonl"
    out: list[dict] = []
    try:
        for record in read_records(path):
            if len(out) >= limit:
                break
            if isinstance(record, dict) and (isinstance(record.get("prompt"), str)
                                             or isinstance(record.get("messages"), list)):
                out.append(record)
    except FileNotFoundError:
        return []
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("eval/prompts.jsonl unreadable (%s): no sample outputs", exc)
    return out


def holdout_pool(items: list[tuple[str, Path, float]]) -> list[dict]:
    """The held-out records of these items (id, data, fraction), interleaved item by item
    (newest item first), so that a capped evaluation still sees every item."""
    shares = [holdout_records(path, fraction) for _, path, fraction in sorted(items, reverse=True)]
    pool = []
    for position in range(max((len(s) for s in shares), default=0)):
        pool += [share[position] for share in shares if position < len(share)]
    return pool


def without(records: list[dict], trained: set[bytes]) -> tuple[list[dict], int]:
    """The records whose key is not in ``trained``, and how many were dropped (contamination:
    evaluating on what was trained on would flatter the model)."""
    kept = [r for r in records if record_key(r) not in trained]
    return kept, len(records) - len(kept)
