"""The record formats a JSONL training file may hold: the one place that says how each is
recognised, what makes one valid, and what the encoder trains on.

Every line of a training file is one JSON object in exactly one of these formats (extra keys
are ignored):

    messages            {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
    text                {"text": "..."}
    prompt/completion   {"prompt": "...", "completion": "..."}

A format is recognised by its keys: a record must have the keys of exactly one format (none:
"no training fields", several: "ambiguous record"). Each `Format` then says:

- `problem(record)`: why a record of this format cannot be trained on, one line for the
  person who wrote it, or None; this is what the validator reports;
- `quick(record)`: a fast yes for the common valid record (it must never accept what
  `problem` refuses; False only means "ask `problem`"), because the validator calls it on
  every line and the detailed checks would cost as much as parsing the JSON;
- `normalise(record)`: the valid record as what the encoder consumes, one of two forms:
  `Chat` (turns for the tokenizer's chat template; the model learns the assistant turns) or
  `Plain` (text pieces, each learned or not, between BOS and EOS).

The validator (trainer.intake.validate) calls `plainly_valid` and `record_problem`; the
encoder (trainer.train.examples) calls `normalise`. Neither knows a format by name.

Adding a format is one entry in FORMATS (its keys, example, problem, quick check and
normalise), plus an encoding only when neither form fits. How the next ones fit:

- ShareGPT ``{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}``: keys
  ``("conversations",)``, normalised to `Chat` by mapping from/value to role/content.
- Alpaca ``{"instruction", "input", "output"}``: normalised to `Chat` (the instruction and
  input as the user turn, the output as the assistant's) or to `Plain` with the output
  learned; no new encoding.
- Conversational prompt/completion (lists of turns under "prompt" and "completion"): the same
  keys as prompt/completion, so that entry's problem and normalise branch on the value type;
  normalised to `Chat` with the prompt's turns not learned, which needs a field on `Chat`
  saying from which turn learning starts, honoured by the encoder's chat encoding (cut the
  mask before the rendered prompt): that is its encoding.
- Tool calls (assistant turns with "tool_calls", "tool" turns, a top-level "tools"): the
  messages entry widens its roles and turn checks; `Chat` gains the tools, which the
  encoder passes to the chat template.
- Preference pairs (``"chosen"``/``"rejected"``), recognised and refused: an entry whose
  problem always says why and how to fix it, whose quick check is the default (never), and
  which has no normalise. They may carry a "prompt", which prompt/completion also claims:
  `recognise` must then let the format whose keys cover the other's win, so that such a
  record is refused as a preference pair rather than reported as ambiguous.

This is a leaf module: stdlib and orjson only, so trainctl can use it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import orjson

ROLES = ("system", "user", "assistant")
"""Chat roles a "messages" turn may have. A tuple, not a set: `in` on a set hashes the value,
which raises TypeError when the JSON holds a list or an object where the role belongs."""


# --- what the encoder consumes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chat:
    """A conversation for the tokenizer's chat template; the model learns the assistant turns."""

    messages: list[dict]
    """The turns as the template takes them, each with at least "role" and "content" (the
    record's own objects, extra keys included: a template may use them)."""


class Piece(NamedTuple):
    text: str
    learned: bool


@dataclass(frozen=True, slots=True)
class Plain:
    """Text without a template: the pieces tokenized one by one between BOS and EOS; the model
    learns the pieces marked learned, and EOS (to stop where the record ends)."""

    pieces: tuple[Piece, ...]


# --- a format ---------------------------------------------------------------------------------


def _never(record: dict) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Format:
    """One record format: how it is recognised, validated and handed to the encoder."""

    name: str
    keys: tuple[str, ...]
    """The fields that mark a record as this format (any one of them)."""
    example: str
    """The shape in one line, for "expected one of ..."."""
    problem: Callable[[dict], str | None]
    """Why a record recognised as this format is invalid, or None."""
    quick: Callable[[dict], bool] = _never
    """A fast yes for a valid record recognised as this format (never a yes `problem` denies);
    the default sends every record to `problem`."""
    normalise: Callable[[dict], Chat | Plain] | None = None
    """The valid record as the encoder consumes it; None for a format that is only refused."""


# --- messages ---------------------------------------------------------------------------------


def _chat_problem(record: dict) -> str | None:
    messages = record["messages"]
    if type(messages) is not list or not messages:
        found = "an empty list" if messages == [] else _json_type(messages)
        return ('"messages" must be a non-empty list of {"role": ..., "content": ...} objects, '
                f"got {found}")
    answered = False
    for index, turn in enumerate(messages):
        if type(turn) is not dict:
            return f'messages[{index}] must be an object with "role" and "content", got {_json_type(turn)}'
        role = turn.get("role")
        if role not in ROLES:
            return _role_problem(index, turn)
        content = turn.get("content")
        if type(content) is not str:
            return f'messages[{index}].content must be a string, got {_json_type(content)}'
        if not answered and role == "assistant" and _has_words(content):
            answered = True
    if not answered:
        return "no assistant turn with non-empty content; there is nothing to learn to say"
    return None


def _chat_quick(record: dict) -> bool:
    messages = record["messages"]
    if type(messages) is not list:
        return False
    answered = False
    for turn in messages:
        if type(turn) is not dict:
            return False
        role = turn.get("role")
        content = turn.get("content")
        if role not in ROLES or type(content) is not str:
            return False
        if role == "assistant" and content and not content.isspace():
            answered = True
    return answered


def _chat_form(record: dict) -> Chat:
    return Chat(record["messages"])


def _role_problem(index: int, turn: dict) -> str:
    allowed = ", ".join(f'"{r}"' for r in ROLES)
    if "role" not in turn:
        return f'messages[{index}] has no "role"; use one of {allowed}'
    role = turn["role"]
    if type(role) is not str:
        return f"messages[{index}].role must be a string, one of {allowed}; got {_json_type(role)}"
    return f"messages[{index}].role {_quote(role)} is not one of {allowed}"


# --- text -------------------------------------------------------------------------------------


def _text_problem(record: dict) -> str | None:
    return _non_empty_string_problem("text", record["text"])


def _text_quick(record: dict) -> bool:
    text = record["text"]
    return type(text) is str and text != "" and not text.isspace()


def _text_form(record: dict) -> Plain:
    return Plain((Piece(record["text"], learned=True),))


# --- prompt/completion ------------------------------------------------------------------------


def _prompt_completion_problem(record: dict) -> str | None:
    for key in ("prompt", "completion"):
        if key not in record:
            return f'"prompt" and "completion" go together; "{key}" is missing'
    prompt = record["prompt"]
    if type(prompt) is not str:
        return f'"prompt" must be a string, got {_json_type(prompt)}'
    return _non_empty_string_problem("completion", record["completion"])


def _prompt_completion_quick(record: dict) -> bool:
    completion = record.get("completion")
    return (type(record.get("prompt")) is str and type(completion) is str
            and completion != "" and not completion.isspace())


def _prompt_completion_form(record: dict) -> Plain:
    return Plain((Piece(record["prompt"], learned=False), Piece(record["completion"], learned=True)))


# --- all of them ------------------------------------------------------------------------------


FORMATS: tuple[Format, ...] = (
    Format(
        name="messages",
        keys=("messages",),
        example='{"messages": [...]}',
        problem=_chat_problem,
        quick=_chat_quick,
        normalise=_chat_form,
    ),
    Format(
        name="text",
        keys=("text",),
        example='{"text": "..."}',
        problem=_text_problem,
        quick=_text_quick,
        normalise=_text_form,
    ),
    Format(
        name="prompt/completion",
        keys=("prompt", "completion"),
        example='{"prompt": "...", "completion": "..."}',
        problem=_prompt_completion_problem,
        quick=_prompt_completion_quick,
        normalise=_prompt_completion_form,
    ),
)
"""In the order problems name them."""

EXPECTED_SHAPES = ", ".join(f.example for f in FORMATS)


# --- dispatch ---------------------------------------------------------------------------------


def record_problem(record: Any) -> str | None:
    """Why a parsed line is not a training record, or None when it is one."""
    if type(record) is not dict:
        return f"expected a JSON object, got {_json_type(record)}"
    fmt = recognise(record)
    if fmt is None:
        return _shape_problem(record)
    return fmt.problem(record)


def normalise(record: dict) -> Chat | Plain:
    """A record the validator accepted, as the encoder consumes it."""
    fmt = recognise(record)
    if fmt is None or fmt.normalise is None:
        # Only validated files are queued, so this is a bug, not a user's mistake.
        raise ValueError(f"not a training record: {record_problem(record)}")
    return fmt.normalise(record)


def recognise(record: dict) -> Format | None:
    """The format whose keys the record has; None when it has none, or those of several."""
    found = [fmt for fmt in FORMATS if any(key in record for key in fmt.keys)]
    return found[0] if len(found) == 1 else None


def _write_plainly_valid(formats: tuple[Format, ...]) -> Callable[[Any], bool]:
    """plainly_valid for these formats, written out as the chain of ifs one would write by hand.

    It runs on every line. A loop over the formats (find the first key, check the others are
    absent, call the quick check) cost 70-170 ns more per record than this chain, as much as
    the checks themselves, and a file of short lines (~0.5 us each) validated 20% slower; so
    the chain is generated from FORMATS, as dataclasses generates __init__.
    """
    source = ["def plainly_valid(record):",
              "    if type(record) is not dict:",
              "        return False"]
    quick_checks = {}
    for index, fmt in enumerate(formats):
        # The keys of the formats before this one are known to be absent once we get here.
        later_keys = [key for later in formats[index + 1:] for key in later.keys]
        quick_checks[f"quick{index}"] = fmt.quick
        exclusive = f"not ({_any_key_test(later_keys)}) and " if later_keys else ""
        source += [f"    if {_any_key_test(fmt.keys)}:",
                   f"        return {exclusive}quick{index}(record)"]
    source.append("    return False")
    namespace = dict(quick_checks)
    exec("\n".join(source), namespace)
    function = namespace["plainly_valid"]
    function.__doc__ = """A fast yes for a valid record; False means "look closer" (record_problem),
    not "invalid". Most lines are valid, and at a few microseconds per line the checks in
    record_problem would cost as much as parsing. Never accepts what record_problem rejects."""
    return function


def _any_key_test(keys: list[str] | tuple[str, ...]) -> str:
    return " or ".join(f"{key!r} in record" for key in keys)


plainly_valid = _write_plainly_valid(FORMATS)


def _shape_problem(record: dict) -> str:
    present = [f'"{key}"' for fmt in FORMATS for key in fmt.keys if key in record]
    if not present:
        return f"no training fields; expected one of {EXPECTED_SHAPES}"
    return (f"ambiguous record: has {' and '.join(present)}; "
            f"keep the fields of exactly one of {EXPECTED_SHAPES}")


# --- small helpers ----------------------------------------------------------------------------


def _has_words(text: str) -> bool:
    # strip() != "" without building the stripped copy.
    return bool(text) and not text.isspace()


def _non_empty_string_problem(key: str, value: Any) -> str | None:
    if type(value) is not str:
        return f'"{key}" must be a string, got {_json_type(value)}'
    if not _has_words(value):
        return f'"{key}" is empty'
    return None


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                    int: "a number", float: "a number", type(None): "null"}


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for reasons that say what was found instead."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _quote(text: str, limit: int = 40) -> str:
    """A string as JSON, shortened: the reason must stay one readable line."""
    quoted = orjson.dumps(text[:limit]).decode()
    return quoted if len(text) <= limit else quoted + "..."
