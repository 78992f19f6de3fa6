"""Reading Prometheus' text exposition format strictly enough to catch a malformed line."""

from __future__ import annotations

import re

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (\S+)$')


def parse(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """{metric name: type} and {series (name and labels, as written): value}; AssertionError
    naming the line when a line is not valid, or a sample comes before its metric's TYPE."""
    typed, values = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in typed, line
            typed[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        assert match.group(1) in typed, f"{match.group(1)} has no TYPE before it"
        values[line.rpartition(" ")[0]] = float(match.group(5))
    return typed, values
