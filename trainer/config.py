"""The config file: one TOML file parsed into frozen, keyword-only dataclasses.

Every field carries its documentation in its metadata; the commented default config that
``trainctl init`` writes and ``docs/configuration.md`` are both rendered from it, so the
three can never disagree. Unknown keys and bad values are errors naming the key and why.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

GiB = 1 << 30
MiB = 1 << 20


def _setting(default: Any, doc: str, *, minimum: float | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "min": minimum})


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """[spool]: how files are accepted into the queue."""

    inbox_settle_seconds: float = _setting(
        5.0,
        "A file copied into inbox/ is taken once its size and mtime have not changed for this "
        "long (a file renamed into inbox/ is taken at once).",
        minimum=0,
    )
    max_file_bytes: int = _setting(
        16 * GiB, "Largest training file accepted, in bytes.", minimum=1
    )
    max_line_bytes: int = _setting(
        8 * MiB,
        "Longest JSONL line (one record) accepted, in bytes; checked without reading the "
        "line into memory.",
        minimum=2,
    )
    max_attempts: int = _setting(
        3,
        "An item whose training was interrupted this many times (crash, OOM kill, transient "
        "error) goes to failed/ instead of back to the queue.",
        minimum=1,
    )


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """[daemon]: how the daemon reports that it is alive."""

    heartbeat_seconds: float = _setting(
        5.0,
        "How often the daemon refreshes the heartbeat in its state file when nothing else "
        "happens.",
        minimum=0.1,
    )
    stale_after_seconds: float = _setting(
        120.0,
        "A heartbeat older than this makes `trainctl status` report the daemon unresponsive. "
        "Keep it above the longest optimizer step.",
        minimum=1,
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _check_value(key: str, value: Any, spec: dataclasses.Field) -> Any:
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(
            f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    minimum = spec.metadata.get("min")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
    return value


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Build a ``Config`` from parsed TOML, rejecting unknown sections, keys and bad values."""
    sections = {}
    for name, table in data.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{name}] (known: {', '.join(sorted(SECTIONS))})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table")
        section_cls = SECTIONS[name]
        specs = {f.name: f for f in dataclasses.fields(section_cls)}
        values = {}
        for key, value in table.items():
            if key not in specs:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key} (known: {', '.join(sorted(specs))})"
                )
            values[key] = _check_value(f"{source}: {name}.{key}", value, specs[key])
        sections[name] = section_cls(**values)
    return Config(**sections)


def load_config(path: Path) -> Config:
    """Read and parse ``path``; a missing file means every default."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return Config()
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read the config (permission denied)") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a config file") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_config(data, str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _wrap(text: str, prefix: str, width: int = 92) -> list[str]:
    lines, line = [], prefix
    for word in text.split():
        if len(line) + len(word) + 1 > width and line != prefix:
            lines.append(line.rstrip())
            line = prefix
        line += word + " "
    lines.append(line.rstrip())
    return lines


def default_config_toml() -> str:
    """The commented config ``trainctl init`` writes: every key, commented out, at its default."""
    out = [
        "# trainer configuration. Every key is shown at its default, commented out;",
        "# uncomment and change what you need. Reference: docs/configuration.md",
    ]
    for name, section_cls in SECTIONS.items():
        out += ["", f"[{name}]"]
        for spec in dataclasses.fields(section_cls):
            out += _wrap(spec.metadata["doc"], "# ")
            out.append(f"# {spec.name} = {_toml_value(spec.default)}")
    return "\n".join(out) + "\n"


def reference_markdown() -> str:
    """The body of docs/configuration.md's reference section."""
    out = []
    for name, section_cls in SECTIONS.items():
        summary = section_cls.__doc__.split(":", 1)[1].strip()
        out += [f"### `[{name}]`", "", summary[0].upper() + summary[1:], ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        for spec in dataclasses.fields(section_cls):
            out.append(
                f"| `{spec.name}` | `{_toml_value(spec.default)}` | {spec.metadata['doc']} |"
            )
        out.append("")
    return "\n".join(out)
