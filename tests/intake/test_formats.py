"""trainer.intake.formats: each record format recognised, validated and normalised; and the
validator and the encoder agreeing on which records are training records."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from trainer.intake import formats
from trainer.intake.formats import (
    EXPECTED_SHAPES,
    FORMATS,
    Chat,
    Format,
    Piece,
    Plain,
    normalise,
    plainly_valid,
    recognise,
    record_problem,
)
from trainer.train.examples import IGNORE

BY_NAME = {fmt.name: fmt for fmt in FORMATS}
TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}]
CHAT = {"messages": TURNS}
TEXT = {"text": "Once upon a time."}
PROMPT = {"prompt": "2+2=", "completion": "4"}
ROLES = '"system", "user", "assistant", "tool"'
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello."}]}
ALPACA = {"instruction": "Add.", "input": "2+2", "output": "4"}
PAIR = {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello."}]}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
TOOLS = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": None, "tool_calls": [CALL]},
                      {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                      {"role": "assistant", "content": "Sunny."}],
         "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]}
PREFERENCE = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}


# --- the table --------------------------------------------------------------------------------


def test_formats_that_share_keys_each_claim_their_own_records():
    # Recognition asks which format's keys a record has: two formats with a shared key must
    # say which records are theirs, or every record with it would be ambiguous.
    for fmt in FORMATS:
        for other in FORMATS:
            if other is not fmt and set(fmt.keys) & set(other.keys):
                assert fmt.claims is not None and other.claims is not None, (fmt.name, other.name)
    for record in (PROMPT, PAIR, {"prompt": "q", "completion": [TURNS[2]]}):
        sharing = [fmt for fmt in FORMATS if "prompt" in fmt.keys]
        assert sum(fmt.claims(record) for fmt in sharing) == 1


def test_every_trainable_format_is_named_in_what_is_expected_and_only_those():
    assert EXPECTED_SHAPES == ", ".join(fmt.example for fmt in FORMATS if fmt.normalise is not None)
    assert [fmt.name for fmt in FORMATS if fmt.normalise is None] == ["preference"]


# --- recognised -------------------------------------------------------------------------------


@pytest.mark.parametrize("record, name", [
    (CHAT, "messages"),
    ({"messages": "not a list", "id": 3}, "messages"),
    (TEXT, "text"),
    ({"text": "", "source": {"url": None}}, "text"),
    (PROMPT, "prompt/completion"),
    ({"prompt": "q"}, "prompt/completion"),
    ({"completion": "a"}, "prompt/completion"),
    (SHAREGPT, "sharegpt"),
    ({"conversations": None}, "sharegpt"),
    (ALPACA, "alpaca"),
    ({"output": "y", "input": "x"}, "alpaca"),
    (PAIR, "conversational prompt/completion"),
    ({"prompt": [], "completion": "a"}, "conversational prompt/completion"),
    (TOOLS, "messages"),
    (PREFERENCE, "preference"),
    ({"chosen": [TURNS[2]], "rejected": [TURNS[2]]}, "preference"),
    # chosen and rejected make a preference pair whatever else it has (a dataset's extra columns)
    ({"messages": TURNS, "prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
])
def test_a_format_is_recognised_by_any_of_its_keys(record, name):
    assert recognise(record) is BY_NAME[name]


@pytest.mark.parametrize("record", [
    {},
    {"input": "x", "answer": "y"},
    {"text": "x", "messages": []},
    {"conversations": [], "messages": []},
    {"instruction": "x", "prompt": "y"},
    {"prompt": "q", "chosen": "a"},
    {"text": "x", "completion": "y"},
    {"messages": [], "prompt": "q", "completion": "a"},
])
def test_a_record_with_the_keys_of_no_format_or_of_several_is_not_recognised(record):
    assert recognise(record) is None


# --- normalised -------------------------------------------------------------------------------


def test_messages_become_a_chat_of_the_records_own_turns():
    form = normalise({"messages": TURNS, "id": 7})
    assert form == Chat(TURNS)
    assert form.messages is TURNS  # extra keys in a turn reach the template untouched


def test_text_becomes_one_learned_piece():
    assert normalise({"text": "abc", "id": 7}) == Plain((Piece("abc", learned=True),))


def test_prompt_and_completion_become_an_unlearned_then_a_learned_piece():
    assert normalise(PROMPT) == Plain((Piece("2+2=", learned=False), Piece("4", learned=True)))


def test_sharegpt_becomes_a_chat_with_its_roles_mapped_and_its_system_first():
    record = {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "Sunny."}], "tools": '[{"name": "weather", "parameters": {}}]'}
    assert normalise(record) == Chat([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}])


def test_alpaca_becomes_a_chat_with_its_history_and_the_input_under_the_instruction():
    record = {**ALPACA, "system": "Be exact.", "history": [["1+1", "2"]]}
    assert normalise(record) == Chat([
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Add.\n2+2"}, {"role": "assistant", "content": "4"}])
    assert normalise({"instruction": "Say hi.", "input": "", "output": "hi"}).messages[0] == {
        "role": "user", "content": "Say hi."}


def test_a_conversational_pair_becomes_a_chat_learned_from_the_completion_on():
    record = {"prompt": [TURNS[1], TURNS[2], TURNS[1]], "completion": [TURNS[2]]}
    assert normalise(record) == Chat([TURNS[1], TURNS[2], TURNS[1], TURNS[2]], learn_from=3)


def test_tool_calls_get_their_arguments_as_objects_as_chat_templates_expect():
    form = normalise(TOOLS)
    assert form.messages[1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    assert form.messages[2] is TOOLS["messages"][2] and form.tools == TOOLS["tools"]
    assert TOOLS["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # untouched


def test_normalising_what_is_no_training_record_says_why():
    with pytest.raises(ValueError, match='^not a training record: ambiguous record: has "text" and "prompt"'):
        normalise({"text": "x", "prompt": "y"})


# --- problems, word for word ------------------------------------------------------------------


SHAPES = ('{"messages": [...]}, {"text": "..."}, {"prompt": "...", "completion": "..."}, '
          '{"conversations": [{"from": ..., "value": ...}]}, {"instruction": "...", "output": "..."}, '
          '{"prompt": [...], "completion": [...]}')
FROM = '"human", "user", "gpt", "assistant", "system", "function_call", "observation", "tool"'


@pytest.mark.parametrize("record, reason", [
    ([1, 2], "expected a JSON object, got a list"),
    ("hi", "expected a JSON object, got a string"),
    (4.5, "expected a JSON object, got a number"),
    (None, "expected a JSON object, got null"),
    ({"input": "x"}, f"no training fields; expected one of {SHAPES}"),
    ({"completion": "a", "messages": [], "text": "t"},
     f'ambiguous record: has "messages" and "text" and "completion"; keep the fields of exactly one of {SHAPES}'),
    # messages
    ({"messages": "hi"},
     '"messages" must be a non-empty list of {"role": ..., "content": ...} objects, got a string'),
    ({"messages": []},
     '"messages" must be a non-empty list of {"role": ..., "content": ...} objects, got an empty list'),
    ({"messages": [TURNS[1], True]}, 'messages[1] must be an object with "role" and "content", got a boolean'),
    ({"messages": [{"content": "x"}]}, f'messages[0] has no "role"; use one of {ROLES}'),
    ({"messages": [{"role": None, "content": "x"}]},
     f"messages[0].role must be a string, one of {ROLES}; got null"),
    ({"messages": [{"role": "bot", "content": "x"}]}, f'messages[0].role "bot" is not one of {ROLES}'),
    ({"messages": [{"role": "b" * 50, "content": "x"}]},
     f'messages[0].role "{"b" * 40}"... is not one of {ROLES}'),
    ({"messages": [{"role": "assistant", "content": {"text": "x"}}]},
     "messages[0].content must be a string, got an object"),
    ({"messages": [TURNS[1], {"role": "assistant", "content": " \n"}]},
     "no assistant turn with non-empty content; there is nothing to learn to say"),
    # text
    ({"text": 3}, '"text" must be a string, got a number'),
    ({"text": "\t"}, '"text" is empty'),
    # prompt/completion
    ({"prompt": "q"}, '"prompt" and "completion" go together; "completion" is missing'),
    ({"completion": "a"}, '"prompt" and "completion" go together; "prompt" is missing'),
    ({"prompt": 1, "completion": "a"},
     '"prompt" must be a string (or, with "completion", a list of messages), got a number'),
    ({"prompt": "q", "completion": None}, '"completion" must be a string, got null'),
    ({"prompt": "q", "completion": ""}, '"completion" is empty'),
    # tool calls in messages
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": []}]},
     'messages[0].tool_calls must be a non-empty list of {"type": "function", "function": {"name", "arguments"}}, '
     "got a list"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}]},
     "messages[0].tool_calls[0].function.name must be a non-empty string, got a string"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments must be an object (or a string holding a JSON object)"),
    ({"messages": [{"role": "assistant", "content": 3, "tool_calls": [CALL]}]},
     "messages[0].content must be a string or null, got a number"),
    ({"messages": [{"role": "tool", "content": None}]}, "messages[0].content must be a string, got null"),
    ({**CHAT, "tools": [{"description": "no name"}]},
     'tools[0] must be {"type": "function", "function": {"name": ..., ...}} or {"name": ..., ...}'),
    # sharegpt
    ({"conversations": []},
     '"conversations" must be a non-empty list of {"from": ..., "value": ...} objects, got an empty list'),
    ({"conversations": [{"from": "bot", "value": "x"}]}, f'conversations[0].from "bot" is not one of {FROM}'),
    ({"conversations": [{"value": "x"}]}, f'conversations[0] has no "from"; use one of {FROM}'),
    ({"conversations": [{"from": "gpt", "value": None}]}, "conversations[0].value must be a string, got null"),
    ({"conversations": [{"from": "human", "value": "q"}]},
     'no "gpt" turn with non-empty value; there is nothing to learn to say'),
    ({"conversations": [{"from": "function_call", "value": "weather(Paris)"}]},
     'conversations[0].value must be a JSON object {"name": ..., "arguments": {...}} (or a list of them) '
     "for a function_call"),
    ({**SHAREGPT, "system": ["x"]}, '"system" must be a string, got a list'),
    # alpaca
    ({"instruction": "x"}, '"instruction" and "output" go together; "output" is missing'),
    ({"instruction": "x", "output": ""}, '"output" is empty'),
    ({"instruction": 1, "output": "y"}, '"instruction" must be a string, got a number'),
    ({**ALPACA, "input": None}, '"input" must be a string, got null'),
    ({**ALPACA, "history": [["q"]]}, 'history[0] must be a pair of strings ["instruction", "output"]'),
    ({**ALPACA, "history": "q"}, '"history" must be a list of ["instruction", "output"] pairs, got a string'),
    # conversational prompt/completion
    ({"prompt": [TURNS[1]], "completion": "a"}, '"completion" must be a list of messages like the other one, got a string'),
    ({"prompt": [TURNS[1]]}, '"prompt" and "completion" go together; "completion" is missing'),
    ({"prompt": [{"role": "bot", "content": "x"}], "completion": [TURNS[2]]},
     f'prompt[0].role "bot" is not one of {ROLES}'),
    ({"prompt": [TURNS[1]], "completion": [TURNS[1]]},
     '"completion" has no assistant turn with content; there is nothing to learn to say'),
    # preference pairs, with or without a prompt
    (PREFERENCE, formats.PREFERENCE_REFUSAL),
    ({"chosen": [TURNS[2]], "rejected": [TURNS[2]]}, formats.PREFERENCE_REFUSAL),
])
def test_each_problem_reads_word_for_word(record, reason):
    assert record_problem(record) == reason
    assert not plainly_valid(record)


@pytest.mark.parametrize("record", [
    CHAT, TEXT, PROMPT, SHAREGPT, ALPACA, PAIR, TOOLS,
    {"prompt": "", "completion": "an empty prompt is fine"},
    {"messages": [TURNS[1], {"role": "assistant", "tool_calls": [CALL]}]},  # a call is something to say
    {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '[{"name": "f"}]'}]},
    {"instruction": "", "output": "an empty instruction is fine", "history": []},
    {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x", "name": "a"}]},
])
def test_a_valid_record_has_no_problem_and_passes_the_quick_check(record):
    assert record_problem(record) is None
    assert plainly_valid(record)


# --- the quick checks -------------------------------------------------------------------------


json_scalars = st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
words = st.text(max_size=12)
good_turns = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                    "content": words})
valid_looking = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(good_turns, min_size=1, max_size=4)}),
    st.fixed_dictionaries({"text": words}),
    st.fixed_dictionaries({"prompt": words, "completion": words}),
)
answers = st.text(min_size=1, max_size=12).filter(lambda text: not text.isspace())
valid_records = st.one_of(
    st.tuples(st.lists(good_turns, max_size=3), answers).map(
        lambda made: {"messages": [*made[0], {"role": "assistant", "content": made[1]}]}),
    st.fixed_dictionaries({"text": answers}),
    st.fixed_dictionaries({"prompt": words, "completion": answers}),
)
odd_values = st.sampled_from(["", " ", "hi", "bot", "assistant"]) | json_values
any_record = st.one_of(
    valid_looking,
    st.fixed_dictionaries({}, optional={
        "messages": st.lists(st.fixed_dictionaries({}, optional={"role": odd_values, "content": odd_values}),
                             max_size=3) | json_values,
        "text": odd_values, "prompt": odd_values, "completion": odd_values, "id": json_values}),
    json_values,
)


@settings(max_examples=500, deadline=None)
@given(value=any_record)
def test_the_fast_path_is_the_recognised_formats_quick_check_which_is_never_wrong(value):
    # False from a quick check only means "ask problem()"; a yes must be right.
    fmt = recognise(value) if type(value) is dict else None
    quick_yes = fmt is not None and fmt.normalise is not None and fmt.quick(value)
    assert bool(plainly_valid(value)) == quick_yes
    assert not quick_yes or fmt.problem(value) is None
    if quick_yes:
        assert plainly_valid(value) == FORMATS.index(fmt) + 1
        assert formats.fast_check_for(fmt)(value) == FORMATS.index(fmt) + 1


def test_a_files_fast_check_says_yes_only_to_the_formats_that_may_share_it():
    by_format = {name: formats.fast_check_for(BY_NAME[name]) for name in BY_NAME}
    kind = {name: FORMATS.index(BY_NAME[name]) + 1 for name in BY_NAME}
    # messages, text and prompt/completion could always share a file, and still can
    for name in ("messages", "text", "prompt/completion"):
        assert [by_format[name](r) for r in (CHAT, TEXT, PROMPT)] == [kind["messages"], kind["text"],
                                                                        kind["prompt/completion"]]
        assert not any(by_format[name](r) for r in (SHAREGPT, ALPACA, PAIR))
    for name, record in (("sharegpt", SHAREGPT), ("alpaca", ALPACA), ("conversational prompt/completion", PAIR)):
        assert by_format[name](record) == kind[name]
        assert not any(by_format[name](r) for r in (CHAT, TEXT, PROMPT, SHAREGPT, ALPACA, PAIR) if r is not record)
    assert not by_format["preference"](PREFERENCE)


def test_the_fast_path_is_written_from_the_table_so_a_new_entry_is_in_it():
    qa = Format(name="qa", keys=("question", "answer"), example='{"question": "...", "answer": "..."}',
                problem=lambda record: None, quick=lambda record: True,
                normalise=lambda record: Plain((Piece(record["answer"], learned=True),)))
    table = (*FORMATS, qa)
    try:
        formats.FORMATS = table  # the chain names each format by its place in the table
        fast = formats._write_fast_check(table)
    finally:
        formats.FORMATS = FORMATS
    assert fast({"question": "q", "answer": "a"}) == len(table) and fast({"answer": "a"})
    assert fast(CHAT) and fast(TEXT) and fast(PROMPT) and fast(SHAREGPT)
    assert not fast({"text": ""}) and not fast([]) and not fast(PREFERENCE)


# --- the validator and the encoder agree ------------------------------------------------------


@pytest.fixture(scope="module")
def encoders(request):
    """The engine's encoder on the demo tokenizer, with its exact chat mask and without."""
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    from trainer.train.examples import RecordEncoder

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue("demo_model"))
    exact = RecordEncoder(tokenizer, max_length=1 << 16)
    by_prefix = RecordEncoder(tokenizer, max_length=1 << 16)
    by_prefix._exact_chat_mask = False
    return tokenizer, (exact, by_prefix)


@pytest.fixture(scope="module")
def spool(tmp_path_factory):
    from trainer.config import default_config_toml
    from trainer.spool.layout import init_base

    layout, _ = init_base(tmp_path_factory.mktemp("agree") / "base", default_config_toml())
    return layout


def learned_text(form: Chat | Plain) -> str:
    """What the model should learn to say, as the demo template and tokenizer write it."""
    if isinstance(form, Chat):
        return "".join(turn["content"] + "<|end|>" for turn in form.messages if turn["role"] == "assistant")
    return "".join(piece.text for piece in form.pieces if piece.learned) + "<|eos|>"


@settings(max_examples=200, deadline=None)
@given(records=st.lists(st.one_of(valid_records, valid_records, any_record), min_size=1, max_size=3))
def test_the_encoder_is_asked_exactly_the_records_the_validator_accepts(records, encoders, spool,
                                                                        tmp_path_factory):
    from trainer.config import Config
    from trainer.errors import InvalidData
    from trainer.intake.enqueue import enqueue
    from trainer.spool import queue
    from trainer.train.data import records as read_records

    tokenizer, (exact, by_prefix) = encoders
    source = tmp_path_factory.mktemp("src") / "data.jsonl"
    source.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    try:
        enqueue(spool, source, limits=Config().spool)
    except InvalidData:
        # Refused: nothing reaches the queue, the engine's only source of records.
        event("refused")
        assert any(record_problem(record) is not None for record in records)
        assert queue.claim_next(spool, datetime.now(timezone.utc)) is None
        return
    event("queued")
    item = queue.claim_next(spool, datetime.now(timezone.utc))
    try:
        queued = list(read_records(item.data_path))
    finally:
        queue.complete(spool, item.id)
    assert queued == records
    for record in queued:
        for encoder in (exact, by_prefix):
            example, truncated = encoder.encode(record)
            learned = [label for label in example.labels if label != IGNORE]
            assert not truncated and learned, record
            decoded = tokenizer.decode(learned, clean_up_tokenization_spaces=False)
            assert decoded == learned_text(normalise(record)), record


def test_a_chat_that_opens_with_the_answer_is_encoded_alike_with_or_without_generation_markers(encoders):
    # Without markers the header is found by rendering the prefix, and transformers will not
    # render an empty one: this record (which the validator accepts) used to crash the encoder.
    tokenizer, (exact, by_prefix) = encoders
    record = {"messages": [{"role": "assistant", "content": "only an answer"},
                           {"role": "user", "content": "ok"}]}
    example, _ = exact.encode(record)
    assert by_prefix.encode(record)[0] == example
    learned = [label for label in example.labels if label != IGNORE]
    assert tokenizer.decode(learned) == "only an answer<|end|>"


odd_turns = st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "tool", "bot"]) | odd_values,
                                        "content": odd_values, "tool_calls": json_values}),
    json_values), max_size=3)
sharegpt_turns = st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={"from": st.sampled_from(list(formats.SHAREGPT_ROLES) + ["bot"]) | odd_values,
                                        "value": odd_values}),
    json_values), max_size=3)
new_format_records = st.one_of(
    st.fixed_dictionaries({"conversations": sharegpt_turns | json_values},
                          optional={"system": odd_values, "tools": json_values}),
    st.fixed_dictionaries({"instruction": odd_values, "output": odd_values},
                          optional={"input": odd_values, "system": odd_values,
                                    "history": st.lists(st.lists(odd_values, max_size=3), max_size=2) | json_values}),
    st.fixed_dictionaries({"prompt": odd_turns, "completion": odd_turns}, optional={"tools": json_values}),
    st.fixed_dictionaries({"messages": odd_turns}, optional={"tools": json_values}),
)


@settings(max_examples=500, deadline=None)
@given(value=new_format_records)
def test_the_quick_checks_of_the_newer_formats_never_accept_what_their_problem_refuses(value):
    fmt = recognise(value)
    if fmt is not None and fmt.quick(value):
        assert fmt.problem(value) is None
        normalise(value)  # and what is accepted can be normalised
