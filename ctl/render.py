"""Turning status, items and events into lines a person reads (the JSON forms are the data)."""

from __future__ import annotations

import math
from datetime import timezone
from typing import TYPE_CHECKING

from trainer.timefmt import parse_iso

if TYPE_CHECKING:
    from trainer.spool.item import Item


def display(value: object) -> str:
    if not isinstance(value, str):
        return str(value)
    from trainer.spool.item import (
        display_name,  # on first use: status prints no file names
    )

    return display_name(value)


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def duration(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{m:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _daemon_line(daemon: dict) -> str:
    live = daemon["liveness"]
    pid = daemon["pid"] or "unknown"  # 0: the lock is held but its pid could not be read
    if live == "running":
        line = f"running (pid {pid}), {daemon['state']}"
        if daemon.get("reason"):
            line += f": {daemon['reason']}"
        return line
    if live == "unknown":
        return f"running (pid {pid} holds the lock), state unknown: {daemon['state_problem']}"
    if live == "unresponsive":
        last = f"last state {daemon['last_state']}" if daemon.get("last_state") else "no state known"
        return (f"UNRESPONSIVE (pid {pid} holds the lock, last heartbeat {duration(daemon['heartbeat_age_s'])} "
                f"ago, {last})")
    line = "not running"
    if daemon.get("last_state") and daemon["last_state"] not in ("stopped",):
        line += (f" (its state file last said {daemon['last_state']!r}, pid {daemon['last_pid']}: "
                 f"it died without shutting down)")
    return line


def _item_line(item: dict, paused: bool) -> str:
    parts = [f"{item.get('id')} {item.get('name') or ''}".rstrip()]
    if item.get("step") is not None and item.get("total") is not None:
        progress = f"step {item['step']}/{item['total']}"
        if item.get("percent") is not None:
            progress += f" ({item['percent']}%)"
        parts.append(progress)
    if isinstance(item.get("loss"), (int, float)):
        parts.append(f"loss {item['loss']:.4f}")
    if paused:  # the last step's speed and an ETA would both be false while nothing moves
        parts.append("paused")
        return "  ".join(parts)
    if isinstance(item.get("tokens_per_s"), (int, float)):
        parts.append(f"{item['tokens_per_s']:,.0f} tok/s")
    if item.get("eta_s") is not None:
        parts.append(f"ETA {duration(item['eta_s'])}")
    return "  ".join(parts)


LIVENESS_ROLE = {"running": "good", "unknown": "warn", "unresponsive": "bad", "not-running": "warn"}


def status_lines(status: dict, colour: bool = False) -> list[str]:
    from ctl.style import paint

    q = status["queues"]
    daemon = status["daemon"]
    lines = [f"daemon      {paint(_daemon_line(daemon), LIVENESS_ROLE.get(daemon['liveness'], 'warn'), colour)}"]
    paused = status["paused"] or daemon.get("state") == "paused"
    if status["paused"]:
        reason = f": {status['pause_reason']}" if status.get("pause_reason") else ""
        lines.append(f"paused      {paint('yes' + reason, 'warn', colour)} (trainctl resume to continue)")
    if status["item"]:
        lines.append(f"item        {_item_line(status['item'], paused)}")
    lines.append(
        f"queues      pending {q['pending']} (high {q['pending.high']}, normal {q['pending.normal']}, "
        f"low {q['pending.low']}) · active {q['active']} · held {q['held']} · failed {q['failed']} "
        f"· done {q['done']}"
    )
    if status["requests"]:
        lines.append(f"requests    {', '.join(status['requests'])} (waiting for the daemon)")
    checkpoint = status.get("last_checkpoint")
    if checkpoint:
        lines.append(f"checkpoint  {_kv(checkpoint)}")
    memory = status.get("memory")
    if isinstance(memory, dict) and memory.get("rss_after_items"):
        samples = [size(v) for v in memory["rss_after_items"] if isinstance(v, (int, float))]
        line = f"memory      after recent items: {', '.join(samples)}"
        if isinstance(memory.get("gpu"), dict):
            line += f"; GPU allocated {size(memory['gpu'].get('allocated'))}, reserved {size(memory['gpu'].get('reserved'))}"
        lines.append(line)
    lines += _world_lines(status.get("world"))
    lines.append(f"disk        {_disk_line(status['disk'])}")
    lines += _eval_lines(status)
    error = status.get("last_error")
    if error:
        lines.append(f"last error  {paint(_kv(error), 'bad', colour)}")
    if status["daemon"].get("state_problem") and status["daemon"]["liveness"] != "unknown":
        lines.append(f"warning     {status['daemon']['state_problem']}")
    return lines


def _world_lines(world: object) -> list[str]:
    """With several ranks: how many, on how many nodes, then a line a rank (host, pid, memory
    at the last step)."""
    if not isinstance(world, dict) or not isinstance(world.get("ranks"), list):
        return []
    nodes = world.get("nodes")
    sharded = ", the model sharded (fsdp)" if world.get("strategy") == "fsdp" else ""
    lines = [f"world       {display(world.get('size'))} ranks on {display(nodes)} node{'s' if nodes != 1 else ''}{sharded}"]
    for rank in world["ranks"]:
        if not isinstance(rank, dict):
            continue
        memory = f"{size(rank['rss'])} resident" if isinstance(rank.get("rss"), int) else "memory not reported yet"
        if rank.get("gpu"):
            memory += f", GPU {size(rank['gpu'])}"
        lines.append(f"  rank {display(rank.get('rank')):<4} {display(rank.get('host'))} pid {display(rank.get('pid'))}: "
                     f"{memory}")
    return lines


def _eval_lines(status: dict) -> list[str]:
    """The last held-out evaluation, and every version the regression gate held back."""
    lines = []
    last = status.get("last_eval")
    if isinstance(last, dict) and isinstance(last.get("eval_loss"), (int, float)):
        lines.append(f"last eval   {last.get('item_id')}: held-out loss {last['eval_loss']:.4f}, "
                     f"token accuracy {last.get('eval_token_accuracy', 0):.3f}")
    for held in status.get("held_back") or []:
        lines.append(f"held back   {held['version']}: {held.get('reason') or 'failed the regression gate'} "
                     f"(trainctl promote {held['version']} / discard {held['version']})")
    return lines


def _disk_line(disk: dict) -> str:
    line = f"{size(disk['free_bytes'])} free of {size(disk['total_bytes'])}"
    if disk.get("free_inodes") == 0:
        line += ", no inodes free"
    if disk.get("read_only"):
        line += ", read-only"
    return line


def _kv(data: object) -> str:
    # The daemon writes these; a damaged state file must still print, not crash status.
    if isinstance(data, dict):
        return ", ".join(f"{k} {v}" for k, v in data.items())
    return str(data)


def item_dict(item: Item) -> dict:
    """An item as JSON: where it is and everything its metadata says."""
    out: dict = {"id": item.id, "state": item.state.value,
                 "priority": item.priority.value if item.priority else None, "path": str(item.path)}
    if item.meta is not None:
        meta = item.meta
        out.update(name=meta.name, source=meta.source, sha256=meta.sha256, size=meta.size,
                   records=meta.records, enqueued_at=meta.enqueued_at, attempts=meta.attempts,
                   errors=[e.__dict__ for e in meta.errors],
                   not_before=meta.not_before, tokens=meta.tokens)
    else:
        out["problem"] = item.meta_problem
    return out


def plain(value) -> str:
    """An event's value for reading: lists joined with commas, mappings as key:value (never a
    Python repr)."""
    if isinstance(value, (list, tuple)):
        return ",".join(plain(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{plain(v)}" for k, v in value.items())
    return str(value)


def event_line(event: dict, *, with_id: bool = True) -> str:
    skip = {"t", "event", "id"}
    details = " ".join(f"{k}={plain(v)}" for k, v in event.items() if k not in skip and v is not None)
    who = f" {event.get('id')}" if with_id and event.get("id") else ""
    return f"{event.get('t')}  {event.get('event'):<9}{who}  {details}".rstrip()


_HASH_KEYS = {"sha256", "hash", "config_hash"}


def event_brief(event: dict, shorts: dict[str, str]) -> str:
    """An event for reading (``trainctl history``): the time to the second, short ids, no hashes
    (``-v`` shows everything)."""
    stamp = str(event.get("t") or "?")
    try:
        stamp = parse_iso(stamp).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        pass
    details = []
    for key, value in event.items():
        if key in ("t", "event", "id") or value is None or key in _HASH_KEYS:
            continue
        if isinstance(value, str) and value in shorts:
            value = shorts[value]
        elif isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            continue
        details.append(f"{key}={display(plain(value))}")
    who = shorts.get(event.get("id"), event.get("id") or "-")
    return f"{stamp}  {event.get('event', '?'):<9}  {who:<8}  {' '.join(details)}".rstrip()


def eval_lines(results: list[dict]) -> list[str]:
    """``trainctl eval``: one line per version and eval set, then each version's sample outputs."""
    lines = [f"{'version':<8} {'set':<16} {'loss':>8} {'ppl':>9} {'acc':>6} {'tokens':>8}"]
    for result in results:
        for name, n in sorted((result.get("sets") or {}).items()):
            lines.append(f"{result['version']:<8} {display(name)[:16]:<16} {n['loss']:>8.4f} {n['perplexity']:>9.2f} "
                         f"{n['token_accuracy']:>6.3f} {n['tokens']:>8}")
    for result in results:
        for sample in result.get("samples") or []:
            lines.append(f"{result['version']}: {display(sample['prompt'])!s} -> {display(sample['output'])}")
    return lines
