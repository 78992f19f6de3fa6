"""Colour where a person watches: on a terminal, unless NO_COLOR is set (no-color.org) or
TERM is dumb. Pipes, files and ``--json`` get plain text."""

from __future__ import annotations

import os
import sys

import click

COLOURS = {"good": "green", "warn": "yellow", "bad": "red", "dim": "bright_black", "head": None}


def wanted(stream=None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, role: str, on: bool) -> str:
    """``text`` in the colour of ``role`` (good, warn, bad, dim, head) when ``on``."""
    if not on or not text:
        return text
    return click.style(text, fg=COLOURS[role], bold=role in ("bad", "head"))
