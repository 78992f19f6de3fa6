"""The record formats a JSONL training file may hold: the one place that says how each is
recognised, what makes one valid, and what the encoder trains on.

Every line of a training file is one JSON object in one of these formats (extra keys are
ignored), as the trainer toolkits people use write them (TRL, LLaMA-Factory, Axolotl):

    messages            {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": "..."}, ...],
                         "tools"?: [...]}; an assistant turn may carry "tool_calls" (OpenAI's shape)
    text                {"text": "..."}
    prompt/completion   {"prompt": "...", "completion": "..."}
    sharegpt            {"conversations": [{"from": "human" | "gpt" | "system" | "function_call"
                         | "observation" | "tool", "value": "..."}, ...], "system"?: "...", "tools"?: ...}
    alpaca              {"instruction": "...", "input"?: "...", "output": "...", "system"?: "...",
                         "history"?: [["instruction", "output"], ...]}
    conversational prompt/completion
                        {"prompt": [turns...], "completion": [turns...]}
    preference          {"chosen": ..., "rejected": ..., "prompt"?: ...}: recognised, and refused

A format is recognised by its keys (any one of them), narrowed by `claims` where two formats
share keys (prompt/completion: strings, or lists of turns), and by `wins_with` (a record with
both "chosen" and "rejected" is a preference pair whatever else it has). A record with the
keys of no format is "no training fields", of several an "ambiguous record". Each `Format`
then says:

- `problem(record)`: why a record of this format cannot be trained on, one line for the
  person who wrote it, or None; this is what the validator reports;
- `quick(record)`: a fast yes for the common valid record (it must never accept what
  `problem` refuses; False only means "ask `problem`"), because the validator calls it on
  every line and the detailed checks would cost as much as parsing the JSON;
- `normalise(record)`: the valid record as what the encoder consumes, one of two forms:
  `Chat` (turns for the tokenizer's chat template, with the tools and where learning starts;
  the model learns the assistant turns) or `Plain` (text pieces, each learned or not,
  between BOS and EOS).

A file holds one format, as those toolkits load one format per dataset: `fast_check_for`
gives the validator the fast check of the formats that may share a file with the first
record's. The one exception is history: messages, text and prompt/completion records, which
were accepted side by side before the other formats came, may still share a file
(`shares_files`), so no file or queued item that was valid became invalid.

The validator (trainer.intake.validate) calls the fast checks and `diagnose`; the encoder
(trainer.train.examples) calls `normalise`. Neither knows a format by name. Adding a format
is one entry in FORMATS, plus an encoding only when neither form fits.

This is a leaf module: stdlib and orjson only, so trainctl can use it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import orjson

ROLES = ("system", "user", "assistant", "tool")
"""Chat roles a turn may have. A tuple, not a set: `in` on a set hashes the value, which
raises TypeError when the JSON holds a list or an object where the role belongs."""

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool", "tool": "tool"}
"""ShareGPT's "from" values (LLaMA-Factory's and Axolotl's defaults) and the role each becomes."""


# --- what the encoder consumes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chat:
    """A conversation for the tokenizer's chat template; the model learns the assistant turns
    from `learn_from` on."""

    messages: list[dict]
    """The turns as the template takes them, each with "role" and "content" (the record's own
    objects where no conversion was needed, extra keys included: a template may use them);
    an assistant turn may have "tool_calls" ([{"type": "function", "function": {"name",
    "arguments": {...}}}], arguments as an object, as chat templates expect)."""
    tools: list[dict] | None = None
    """Tool definitions for the template ({"type": "function", "function": {...}}), or None."""
    learn_from: int = 0
    """Turns before this index are context only, assistant or not (a conversational prompt)."""


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
    """The shape in one line, for "expected one of ..." (empty: not offered, a refused format)."""
    problem: Callable[[dict], str | None]
    """Why a record recognised as this format is invalid, or None."""
    quick: Callable[[dict], bool] = _never
    """A fast yes for a valid record recognised as this format (never a yes `problem` denies);
    the default sends every record to `problem`."""
    normalise: Callable[[dict], Chat | Plain] | None = None
    """The valid record as the encoder consumes it; None for a format that is only refused."""
    claims: Callable[[dict], bool] | None = None
    """For formats that share keys: whether a record with them is this one."""
    wins_with: tuple[str, ...] = ()
    """Keys that, all present, make a record this format whatever other format's keys it has."""
    shares_files: bool = False
    """May share a file with the other formats that may (the three accepted before the rest)."""


# --- turns (messages, conversational prompt/completion) ---------------------------------------


def _turns_problem(field: str, turns: Any, *, allow_empty: bool = False) -> tuple[str | None, bool]:
    """(why these turns cannot be trained on or None, whether an assistant turn says something)."""
    if type(turns) is not list or not (turns or allow_empty):
        found = "an empty list" if turns == [] else _json_type(turns)
        return (f'"{field}" must be a non-empty list of {{"role": ..., "content": ...}} objects, '
                f"got {found}"), False
    answered = False
    for index, turn in enumerate(turns):
        if type(turn) is not dict:
            return f'{field}[{index}] must be an object with "role" and "content", got {_json_type(turn)}', False
        role = turn.get("role")
        if role not in ROLES:
            return _role_problem(field, index, turn), False
        content = turn.get("content")
        if role == "assistant" and "tool_calls" in turn:
            problem = _tool_calls_problem(f"{field}[{index}].tool_calls", turn["tool_calls"])
            if problem:
                return problem, False
            if content is not None and type(content) is not str:
                return f"{field}[{index}].content must be a string or null, got {_json_type(content)}", False
            answered = True
            continue
        if type(content) is not str:
            return f"{field}[{index}].content must be a string, got {_json_type(content)}", False
        if not answered and role == "assistant" and _has_words(content):
            answered = True
    return None, answered


def _turns_quick(turns: Any) -> int:
    """The common case of `_turns_problem` (no tool calls), at the speed of a quick check:
    0 when unsure, 1 when the turns are fine, 2 when they are fine and an assistant says
    something."""
    if type(turns) is not list:
        return 0
    answered = 1
    for turn in turns:
        if type(turn) is not dict:
            return 0
        role = turn.get("role")
        content = turn.get("content")
        if role not in ROLES or type(content) is not str:
            return 0
        if role == "assistant":
            if "tool_calls" in turn:
                return 0
            if content and not content.isspace():
                answered = 2
    return answered


def _role_problem(field: str, index: int, turn: dict) -> str:
    allowed = ", ".join(f'"{r}"' for r in ROLES)
    if "role" not in turn:
        return f'{field}[{index}] has no "role"; use one of {allowed}'
    role = turn["role"]
    if type(role) is not str:
        return f"{field}[{index}].role must be a string, one of {allowed}; got {_json_type(role)}"
    return f"{field}[{index}].role {_quote(role)} is not one of {allowed}"


def _tool_calls_problem(field: str, calls: Any) -> str | None:
    if type(calls) is not list or not calls:
        return f'{field} must be a non-empty list of {{"type": "function", "function": {{"name", "arguments"}}}}, got {_json_type(calls)}'
    for index, call in enumerate(calls):
        if type(call) is not dict or type(call.get("function")) is not dict:
            return f'{field}[{index}] must be an object with a "function": {{"name": ..., "arguments": ...}}'
        if call.get("type", "function") != "function":
            return f'{field}[{index}].type must be "function"'
        problem = _function_problem(f"{field}[{index}].function", call["function"])
        if problem:
            return problem
    return None


def _function_problem(field: str, function: dict) -> str | None:
    name = function.get("name")
    if type(name) is not str or not _has_words(name):
        return f"{field}.name must be a non-empty string, got {_json_type(name)}"
    arguments = function.get("arguments", {})
    if type(arguments) is str:
        arguments = _loads_or_none(arguments)
    if type(arguments) is not dict:
        return f"{field}.arguments must be an object (or a string holding a JSON object)"
    return None


def _tools_problem(tools: Any) -> str | None:
    if type(tools) is str:
        tools = _loads_or_none(tools)
    if type(tools) is not list:
        return '"tools" must be a list of tool definitions (or a string holding one)'
    for index, tool in enumerate(tools):
        function = tool.get("function", tool) if type(tool) is dict else None
        if type(function) is not dict or type(function.get("name")) is not str:
            return f'tools[{index}] must be {{"type": "function", "function": {{"name": ..., ...}}}} or {{"name": ..., ...}}'
    return None


def _tools_form(tools: Any) -> list[dict] | None:
    """Tool definitions as chat templates take them (OpenAI's wrapping)."""
    if tools is None:
        return None
    if type(tools) is str:
        tools = orjson.loads(tools)
    return [tool if "function" in tool else {"type": "function", "function": tool} for tool in tools]


def _call_form(call: dict) -> dict:
    """A tool call with its arguments as an object: templates expect one (OpenAI sends a
    JSON string, which a template would print quoted)."""
    function = call["function"]
    arguments = function.get("arguments", {})
    if type(arguments) is str:
        arguments = orjson.loads(arguments)
    return {**call, "type": "function", "function": {**function, "arguments": arguments}}


def _turns_form(turns: list[dict]) -> list[dict]:
    if not any("tool_calls" in turn for turn in turns):
        return turns
    return [{**turn, "tool_calls": [_call_form(c) for c in turn["tool_calls"]]} if "tool_calls" in turn else turn
            for turn in turns]


# --- messages ---------------------------------------------------------------------------------


def _chat_problem(record: dict) -> str | None:
    problem, answered = _turns_problem("messages", record["messages"])
    if problem:
        return problem
    if not answered:
        return "no assistant turn with non-empty content; there is nothing to learn to say"
    return _tools_problem(record["tools"]) if "tools" in record else None


def _chat_quick(record: dict) -> bool:
    # Tool calls and definitions are checked in full (they are rarer, and a file of them
    # would otherwise be parsed twice, once by the fast pass and again line by line).
    if "tools" not in record and _turns_quick(record["messages"]) == 2:
        return True
    return _chat_problem(record) is None


def _chat_form(record: dict) -> Chat:
    return Chat(_turns_form(record["messages"]), _tools_form(record.get("tools")))


# --- text -------------------------------------------------------------------------------------


def _text_problem(record: dict) -> str | None:
    return _non_empty_string_problem("text", record["text"])


def _text_quick(record: dict) -> bool:
    text = record["text"]
    return type(text) is str and text != "" and not text.isspace()


def _text_form(record: dict) -> Plain:
    return Plain((Piece(record["text"], learned=True),))


# --- prompt/completion ------------------------------------------------------------------------


def _conversational(record: dict) -> bool:
    return type(record.get("prompt")) is list or type(record.get("completion")) is list


def _prompt_completion_problem(record: dict) -> str | None:
    for key in ("prompt", "completion"):
        if key not in record:
            return f'"prompt" and "completion" go together; "{key}" is missing'
    prompt = record["prompt"]
    if type(prompt) is not str:
        return f'"prompt" must be a string (or, with "completion", a list of messages), got {_json_type(prompt)}'
    return _non_empty_string_problem("completion", record["completion"])


def _prompt_completion_quick(record: dict) -> bool:
    completion = record.get("completion")
    return (type(record.get("prompt")) is str and type(completion) is str
            and completion != "" and not completion.isspace())


def _prompt_completion_form(record: dict) -> Plain:
    return Plain((Piece(record["prompt"], learned=False), Piece(record["completion"], learned=True)))


def _conversation_pair_problem(record: dict) -> str | None:
    for key in ("prompt", "completion"):
        if key not in record:
            return f'"prompt" and "completion" go together; "{key}" is missing'
        if type(record[key]) is not list:
            return f'"{key}" must be a list of messages like the other one, got {_json_type(record[key])}'
    problem, _ = _turns_problem("prompt", record["prompt"])
    if problem:
        return problem
    problem, answered = _turns_problem("completion", record["completion"])
    if problem:
        return problem
    if not answered:
        return '"completion" has no assistant turn with content; there is nothing to learn to say'
    return _tools_problem(record["tools"]) if "tools" in record else None


def _conversation_pair_quick(record: dict) -> bool:
    prompt = record.get("prompt")
    if "tools" not in record and prompt and _turns_quick(prompt) and _turns_quick(record.get("completion")) == 2:
        return True
    return _conversation_pair_problem(record) is None


def _conversation_pair_form(record: dict) -> Chat:
    prompt = _turns_form(record["prompt"])
    return Chat([*prompt, *_turns_form(record["completion"])], _tools_form(record.get("tools")),
                learn_from=len(prompt))


# --- sharegpt ---------------------------------------------------------------------------------


_SHAREGPT_FROM = ", ".join(f'"{name}"' for name in SHAREGPT_ROLES)


def _sharegpt_problem(record: dict) -> str | None:
    turns = record["conversations"]
    if type(turns) is not list or not turns:
        found = "an empty list" if turns == [] else _json_type(turns)
        return f'"conversations" must be a non-empty list of {{"from": ..., "value": ...}} objects, got {found}'
    answered = False
    for index, turn in enumerate(turns):
        if type(turn) is not dict:
            return f'conversations[{index}] must be an object with "from" and "value", got {_json_type(turn)}'
        who = turn.get("from")
        if type(who) is not str or who not in SHAREGPT_ROLES:
            if "from" not in turn:
                return f'conversations[{index}] has no "from"; use one of {_SHAREGPT_FROM}'
            shown = _quote(who) if type(who) is str else _json_type(who)
            return f"conversations[{index}].from {shown} is not one of {_SHAREGPT_FROM}"
        value = turn.get("value")
        if type(value) is not str:
            return f"conversations[{index}].value must be a string, got {_json_type(value)}"
        if who == "function_call":
            if _function_calls(value) is None:
                return (f'conversations[{index}].value must be a JSON object {{"name": ..., "arguments": {{...}}}} '
                        f"(or a list of them) for a function_call")
            answered = True
        elif not answered and SHAREGPT_ROLES[who] == "assistant" and _has_words(value):
            answered = True
    if not answered:
        return 'no "gpt" turn with non-empty value; there is nothing to learn to say'
    if "system" in record and type(record["system"]) is not str:
        return f'"system" must be a string, got {_json_type(record["system"])}'
    return _tools_problem(record["tools"]) if "tools" in record else None


def _sharegpt_quick(record: dict) -> bool:
    # The common case (no function calls, system or tools) as fast as the messages' check.
    turns = record["conversations"]
    if type(turns) is list and "system" not in record and "tools" not in record:
        answered = False
        for turn in turns:
            if type(turn) is not dict:
                break
            who = turn.get("from")
            value = turn.get("value")
            if type(who) is not str or type(value) is not str or who not in _PLAIN_SHAREGPT:
                break
            if not answered and _PLAIN_SHAREGPT[who] and value and not value.isspace():
                answered = True
        else:
            return answered
    return _sharegpt_problem(record) is None


_PLAIN_SHAREGPT = {who: role == "assistant" for who, role in SHAREGPT_ROLES.items() if who != "function_call"}


def _function_calls(value: str) -> list[dict] | None:
    """A function_call turn's value as tool calls, or None when it is not one."""
    calls = _loads_or_none(value)
    calls = [calls] if type(calls) is dict else calls
    if type(calls) is not list or not calls:
        return None
    for call in calls:
        if type(call) is not dict or _function_problem("value", call) is not None:
            return None
    return [_call_form({"type": "function", "function": call}) for call in calls]


def _sharegpt_form(record: dict) -> Chat:
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for turn in record["conversations"]:
        who, value = turn["from"], turn["value"]
        if who == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": _function_calls(value)})
        else:
            messages.append({"role": SHAREGPT_ROLES[who], "content": value})
    return Chat(messages, _tools_form(record.get("tools")))


# --- alpaca -----------------------------------------------------------------------------------


def _alpaca_problem(record: dict) -> str | None:
    for key in ("instruction", "output"):
        if key not in record:
            return f'"instruction" and "output" go together; "{key}" is missing'
    for key in ("instruction", "input", "system"):
        if key in record and type(record[key]) is not str:
            return f'"{key}" must be a string, got {_json_type(record[key])}'
    problem = _non_empty_string_problem("output", record["output"])
    if problem:
        return problem
    history = record.get("history")
    if history is None:
        return None
    if type(history) is not list:
        return f'"history" must be a list of ["instruction", "output"] pairs, got {_json_type(history)}'
    for index, pair in enumerate(history):
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not str:
            return f'history[{index}] must be a pair of strings ["instruction", "output"]'
    return None


def _alpaca_quick(record: dict) -> bool:
    output = record.get("output")
    if (type(record.get("instruction")) is str and type(output) is str and output and not output.isspace()
            and type(record.get("input", "")) is str and type(record.get("system", "")) is str
            and "history" not in record):
        return True
    return _alpaca_problem(record) is None


def _alpaca_form(record: dict) -> Chat:
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for asked, answered in record.get("history") or ():
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    # Instruction, then input on the next line, as LLaMA-Factory and the Alpaca recipes join them.
    query = record["instruction"] + ("\n" + record["input"] if record.get("input") else "")
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": record["output"]}]
    return Chat(messages)


# --- preference pairs (refused) ---------------------------------------------------------------


PREFERENCE_REFUSAL = ('preference pairs (chosen/rejected) are not supported yet: this trainer does supervised '
                      'fine-tuning only; to train on the chosen answers, write them as "messages" (or '
                      '"prompt"/"completion") records without "rejected"')


def _preference_problem(record: dict) -> str:
    return PREFERENCE_REFUSAL


# --- all of them ------------------------------------------------------------------------------


FORMATS: tuple[Format, ...] = (
    Format(name="messages", keys=("messages",), example='{"messages": [...]}',
           problem=_chat_problem, quick=_chat_quick, normalise=_chat_form, shares_files=True),
    Format(name="text", keys=("text",), example='{"text": "..."}',
           problem=_text_problem, quick=_text_quick, normalise=_text_form, shares_files=True),
    Format(name="prompt/completion", keys=("prompt", "completion"),
           example='{"prompt": "...", "completion": "..."}', problem=_prompt_completion_problem,
           quick=_prompt_completion_quick, normalise=_prompt_completion_form,
           claims=lambda record: not _conversational(record), shares_files=True),
    Format(name="sharegpt", keys=("conversations",), example='{"conversations": [{"from": ..., "value": ...}]}',
           problem=_sharegpt_problem, quick=_sharegpt_quick, normalise=_sharegpt_form),
    Format(name="alpaca", keys=("instruction", "output"), example='{"instruction": "...", "output": "..."}',
           problem=_alpaca_problem, quick=_alpaca_quick, normalise=_alpaca_form),
    Format(name="conversational prompt/completion", keys=("prompt", "completion"),
           example='{"prompt": [...], "completion": [...]}', problem=_conversation_pair_problem,
           quick=_conversation_pair_quick, normalise=_conversation_pair_form, claims=_conversational),
    Format(name="preference", keys=("chosen", "rejected"), example="", problem=_preference_problem,
           wins_with=("chosen", "rejected")),
)
"""In the order problems name them."""

EXPECTED_SHAPES = ", ".join(f.example for f in FORMATS if f.example)
SHARING_FILES = tuple(f for f in FORMATS if f.shares_files)


# --- dispatch ---------------------------------------------------------------------------------


def diagnose(record: Any) -> tuple[Format | None, str | None]:
    """The record's format (None when it has none) and why it is not a training record (None
    when it is one)."""
    if type(record) is not dict:
        return None, f"expected a JSON object, got {_json_type(record)}"
    fmt = recognise(record)
    if fmt is None:
        return None, _shape_problem(record)
    return fmt, fmt.problem(record)


def record_problem(record: Any) -> str | None:
    """Why a parsed line is not a training record, or None when it is one."""
    return diagnose(record)[1]


def normalise(record: dict) -> Chat | Plain:
    """A record the validator accepted, as the encoder consumes it."""
    fmt = recognise(record)
    if fmt is None or fmt.normalise is None:
        # Only validated files are queued, so this is a bug, not a user's mistake.
        raise ValueError(f"not a training record: {record_problem(record)}")
    return fmt.normalise(record)


def recognise(record: dict) -> Format | None:
    """The format whose keys the record has; None when it has none, or those of several."""
    found = [fmt for fmt in FORMATS
             if any(key in record for key in fmt.keys) and (fmt.claims is None or fmt.claims(record))]
    if len(found) > 1:
        found = [fmt for fmt in found if fmt.wins_with and all(k in record for k in fmt.wins_with)] or found
    return found[0] if len(found) == 1 else None


def may_share_a_file(first: Format, other: Format) -> bool:
    return first is other or (first.shares_files and other.shares_files)


def mixed_problem(fmt: Format, record: dict, first: Format, first_line: int) -> str:
    """Why a valid record cannot stay in a file whose first record is of another format."""
    field = next((key for key in fmt.keys if key in record), fmt.keys[0])
    return (f'a {fmt.name} record (it has "{field}") in a file of {first.name} records (line {first_line}): '
            f"a file holds one format; split it into one file per format")


def _write_fast_check(formats: tuple[Format, ...]) -> Callable[[Any], int]:
    """The fast check for these formats, written out as the chain of ifs one would write by hand:
    it returns the record's format's place in FORMATS, plus one, when the record is plainly a
    valid record of one of them, else 0 ("look closer", not "invalid").

    It runs on every line. A loop over the formats cost 70-170 ns more per record than this
    chain, as much as the checks themselves, and a file of short lines (~0.5 us each)
    validated 20% slower; so the chain is generated from FORMATS, as dataclasses generates
    __init__. A record with a key of any other format is never a fast yes (it is ambiguous).
    """
    all_keys = {key for fmt in FORMATS for key in fmt.keys}
    source = ["def fast_check(record):",
              "    if type(record) is not dict:",
              "        return 0"]
    namespace: dict[str, Any] = {}
    for fmt in formats:
        index = FORMATS.index(fmt)
        namespace[f"quick{index}"] = fmt.quick
        namespace[f"others{index}"] = frozenset(all_keys - set(fmt.keys))
        source += [f"    if ({_any_key_test(fmt.keys)}) and others{index}.isdisjoint(record) and quick{index}(record):",
                   f"        return {index + 1}"]
    source.append("    return 0")
    exec("\n".join(source), namespace)
    return namespace["fast_check"]


def _any_key_test(keys: tuple[str, ...]) -> str:
    return " or ".join(f"{key!r} in record" for key in keys)


_FAST_CHECKS: dict[tuple[Format, ...], Callable[[Any], int]] = {}


def fast_check_for(fmt: Format, *, alone: bool = False) -> Callable[[Any], int]:
    """The fast check for a file whose first record is of ``fmt``: it says yes only to valid
    records that may share that file; ``alone``: only to records of ``fmt`` itself (the
    common case, and a chain of one test is the fastest)."""
    allowed = SHARING_FILES if fmt.shares_files and not alone else (fmt,)
    if allowed not in _FAST_CHECKS:
        _FAST_CHECKS[allowed] = _write_fast_check(allowed)
    return _FAST_CHECKS[allowed]


plainly_valid = _write_fast_check(tuple(f for f in FORMATS if f.normalise is not None))
plainly_valid.__doc__ = """A fast yes (non-zero) for a valid record of any trainable format; 0
means "look closer" (record_problem), not "invalid". Never accepts what record_problem rejects."""


def _shape_problem(record: dict) -> str:
    present = list(dict.fromkeys(f'"{key}"' for fmt in FORMATS for key in fmt.keys if key in record))
    if not present:
        return f"no training fields; expected one of {EXPECTED_SHAPES}"
    return (f"ambiguous record: has {' and '.join(present)}; "
            f"keep the fields of exactly one of {EXPECTED_SHAPES}")


# --- small helpers ----------------------------------------------------------------------------


def _has_words(text: str) -> bool:
    # strip() != "" without building the stripped copy.
    return bool(text) and not text.isspace()


def _loads_or_none(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


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
