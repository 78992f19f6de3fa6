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
ROLES = '"system", "user", "assistant"'


# --- the table --------------------------------------------------------------------------------


def test_no_two_formats_share_a_key():
    # Recognition asks which format's keys a record has: a shared key would make every record
    # with it ambiguous.
    keys = [key for fmt in FORMATS for key in fmt.keys]
    assert len(keys) == len(set(keys))


def test_every_format_is_named_in_what_is_expected():
    assert EXPECTED_SHAPES == ", ".join(fmt.example for fmt in FORMATS)
    assert all(fmt.normalise is not None for fmt in FORMATS)  # none of today's is refuse-only


# --- recognised -------------------------------------------------------------------------------


@pytest.mark.parametrize("record, name", [
    (CHAT, "messages"),
    ({"messages": "not a list", "id": 3}, "messages"),
    (TEXT, "text"),
    ({"text": "", "source": {"url": None}}, "text"),
    (PROMPT, "prompt/completion"),
    ({"prompt": "q"}, "prompt/completion"),
    ({"completion": "a"}, "prompt/completion"),
])
def test_a_format_is_recognised_by_any_of_its_keys(record, name):
    assert recognise(record) is BY_NAME[name]


@pytest.mark.parametrize("record", [
    {},
    {"input": "x", "output": "y"},
    {"text": "x", "messages": []},
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


def test_normalising_what_is_no_training_record_says_why():
    with pytest.raises(ValueError, match='^not a training record: ambiguous record: has "text" and "prompt"'):
        normalise({"text": "x", "prompt": "y"})


# --- problems, word for word ------------------------------------------------------------------


SHAPES = '{"messages": [...]}, {"text": "..."}, {"prompt": "...", "completion": "..."}'


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
    ({"prompt": ["q"], "completion": "a"}, '"prompt" must be a string, got a list'),
    ({"prompt": "q", "completion": None}, '"completion" must be a string, got null'),
    ({"prompt": "q", "completion": ""}, '"completion" is empty'),
])
def test_each_problem_reads_word_for_word(record, reason):
    assert record_problem(record) == reason
    assert not plainly_valid(record)


@pytest.mark.parametrize("record", [
    CHAT, TEXT, PROMPT,
    {"prompt": "", "completion": "an empty prompt is fine"},
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
    quick_yes = fmt is not None and fmt.quick(value)
    assert plainly_valid(value) == quick_yes
    assert not quick_yes or fmt.problem(value) is None


def test_the_fast_path_is_written_from_the_table_so_a_new_entry_is_in_it():
    qa = Format(name="qa", keys=("question", "answer"), example='{"question": "...", "answer": "..."}',
                problem=lambda record: None, quick=lambda record: True,
                normalise=lambda record: Plain((Piece(record["answer"], learned=True),)))
    fast = formats._write_plainly_valid((*FORMATS, qa))
    assert fast({"question": "q", "answer": "a"}) and fast({"answer": "a"})
    assert not fast({"question": "q", "text": "a"})  # two formats' keys: look closer
    assert fast(CHAT) and fast(TEXT) and fast(PROMPT)
    assert not fast({"text": ""}) and not fast([])




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
