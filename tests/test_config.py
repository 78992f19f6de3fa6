"""The config: frozen dataclasses, errors that name the key, docs rendered from the fields."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from trainer.config import Config, default_config_toml, load_config, parse_config, reference_markdown
from trainer.errors import ConfigError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_missing_file_means_defaults(tmp_path):
    assert load_config(tmp_path / "absent.toml") == Config()


def test_the_default_config_parses_to_the_defaults():
    assert parse_config(tomllib.loads(default_config_toml())) == Config()


def test_values_are_read_and_ints_widen_to_floats(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[spool]\ninbox_settle_seconds = 2\nmax_attempts = 5\n")
    config = load_config(path)
    assert config.spool.inbox_settle_seconds == 2.0 and config.spool.max_attempts == 5


@pytest.mark.parametrize("text, expected", [
    ("[spool]\nmax_atempts = 3\n", "unknown key spool.max_atempts"),
    ("[spoool]\n", "unknown section [spoool]"),
    ("[spool]\nmax_attempts = 'three'\n", "spool.max_attempts: expected int, got str"),
    ("[spool]\nmax_attempts = 0\n", "spool.max_attempts: must be >= 1"),
    ("[spool]\nmax_attempts = true\n", "spool.max_attempts: expected int, got bool"),
    ("[spool]\ninbox_settle_seconds = -1\n", "spool.inbox_settle_seconds: must be >= 0"),
    ("spool = 3\n", "spool must be a [spool] table"),
    ("[spool\n", "invalid TOML"),
])
def test_bad_config_names_the_key_and_the_reason(tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        load_config(path)


def test_non_utf8_config_is_a_clear_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"[spool]\n\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_config_is_frozen_and_keyword_only():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.spool.max_attempts = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        type(config.spool)(3)  # type: ignore[misc]


def test_docs_list_every_key_with_its_default():
    assert reference_markdown() in DOCS.read_text(), "regenerate docs/configuration.md (see its header)"
