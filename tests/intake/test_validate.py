"""trainer.intake.validate: what a JSONL training file may contain, and how problems are reported."""

from __future__ import annotations

import hashlib
import io
import random
import tracemalloc

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.intake.validate import (  # the two private checks are held to the reference below
    EXPECTED_SHAPES,
    MAX_PROBLEMS_LISTED,
    Problem,
    Report,
    Validator,
    _plainly_valid,
    _record_problem,
    validate_path,
    validate_stream,
)

MiB = 1 << 20
LIMITS = {"max_line_bytes": 4096, "max_file_bytes": 1 << 30}
CHAT = b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}'
TEXT = b'{"text": "Once upon a time."}'
PROMPT = b'{"prompt": "2+2=", "completion": "4"}'


def validate(data: bytes, **limits) -> Report:
    return validate_stream(io.BytesIO(data).read, **{**LIMITS, **limits})


def validate_in_chunks(data: bytes, sizes, **limits) -> Report:
    """Feed data in pieces of the given sizes (cycled), as a slow pipe would deliver it."""
    validator = Validator(**{**LIMITS, **limits})
    position, sizes = 0, list(sizes)
    while position < len(data):
        size = sizes[position % len(sizes)]
        validator.feed(data[position:position + size])
        position += size
    return validator.finish()


def only_problem(report: Report) -> Problem:
    assert report.problem_count == 1, report.problems
    return report.problems[0]


# --- accepted records -------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    CHAT,
    TEXT,
    PROMPT,
    b'{"prompt": "", "completion": "an empty prompt is fine"}',
    b'{"messages": [{"role": "assistant", "content": "only an answer"}]}',
    b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}',
    b'{"text": "extra keys are ignored", "id": 7, "source": {"url": null}}',
    b'{"messages": [{"role": "assistant", "content": "x", "weight": 0}], "meta": [1, 2]}',
])
def test_each_accepted_shape_counts_as_a_record(line):
    report = validate(line + b"\n")
    assert report.ok, report.problems
    assert report.records == 1


def test_records_count_only_valid_lines():
    report = validate(b"\n".join([CHAT, b"{}", TEXT, b"[]", PROMPT]) + b"\n")
    assert report.records == 3
    assert report.problem_count == 2


# --- problems, each with its line number ------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    (b'{"text": "caf\xe9"}', "invalid UTF-8"),
    (b'\xff\xfe{"text": "utf-16 maybe"}', "invalid UTF-8"),
    (b'{"text": "unterminated', "invalid JSON: unexpected end of data"),
    (b"{'text': 'single quotes'}", "invalid JSON"),
    (b'{"text": "x"} trailing', "invalid JSON"),
    (b"[1, 2]", "expected a JSON object, got a list"),
    (b'"just a string"', "expected a JSON object, got a string"),
    (b"42", "expected a JSON object, got a number"),
    (b"null", "expected a JSON object, got null"),
    (b'{"input": "x", "answer": "y"}', f"expected one of {EXPECTED_SHAPES}"),
    (b'{"input": "x", "output": "y"}', '"instruction" and "output" go together; "instruction" is missing'),
    (b'{"text": "x", "messages": []}', 'ambiguous record: has "messages" and "text"'),
    (b'{"text": "x", "completion": "y"}', 'ambiguous record: has "text" and "completion"'),
    (b'{"messages": "hi"}', '"messages" must be a non-empty list'),
    (b'{"messages": []}', "got an empty list"),
    (b'{"messages": ["hi"]}', "messages[0] must be an object"),
    (b'{"messages": [{"role": "bot", "content": "x"}]}',
     'messages[0].role "bot" is not one of "system", "user", "assistant", "tool"'),
    (b'{"messages": [{"content": "x"}]}', 'messages[0] has no "role"'),
    (b'{"messages": [{"role": 1, "content": "x"}]}', "messages[0].role must be a string"),
    (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 4}]}',
     "messages[1].content must be a string, got a number"),
    (b'{"messages": [{"role": "assistant"}]}', "messages[0].content must be a string, got null"),
    (b'{"messages": [{"role": "user", "content": "q"}]}', "no assistant turn with non-empty content"),
    (b'{"messages": [{"role": "assistant", "content": " \\n\\t"}]}', "no assistant turn with non-empty content"),
    (b'{"text": ""}', '"text" is empty'),
    (b'{"text": "   "}', '"text" is empty'),
    (b'{"text": ["a"]}', '"text" must be a string, got a list'),
    (b'{"prompt": "q", "completion": ""}', '"completion" is empty'),
    (b'{"prompt": "q"}', '"completion" is missing'),
    (b'{"completion": "a"}', '"prompt" is missing'),
    (b'{"prompt": 1, "completion": "a"}', '"prompt" must be a string (or, with "completion", a list of messages), got a number'),
    (b'{"prompt": "q", "completion": false}', '"completion" must be a string, got a boolean'),
])
def test_each_problem_is_reported_with_its_line_number(line, expected):
    report = validate(b"\n".join([TEXT, CHAT, line, PROMPT]) + b"\n")
    problem = only_problem(report)
    assert problem.line == 3
    assert expected in problem.reason
    assert report.records == 3


def test_a_long_bad_role_is_shortened_in_the_reason():
    line = orjson.dumps({"messages": [{"role": "x" * 1000, "content": "y"}]})
    reason = only_problem(validate(line)).reason
    assert len(reason) < 200
    assert reason.endswith('is not one of "system", "user", "assistant", "tool"')


def test_utf8_problem_is_not_mistaken_for_a_json_problem():
    reason = only_problem(validate(b'{"text": "\xc3\x28"}\n')).reason
    assert reason.startswith("invalid UTF-8")
    assert "JSON" not in reason


def test_line_over_limit_is_reported_and_the_next_lines_are_still_checked():
    long_line = orjson.dumps({"text": "x" * 200})
    report = validate(b"\n".join([TEXT, long_line, TEXT, b"{}"]) + b"\n", max_line_bytes=100)
    assert report.problems == (
        Problem(2, "line is longer than the limit of 100 bytes (spool.max_line_bytes)"),
        Problem(4, f"no training fields; expected one of {EXPECTED_SHAPES}"),
    )
    assert report.records == 2


def test_line_exactly_at_the_limit_is_accepted():
    line = orjson.dumps({"text": "x" * 50})
    assert validate(line + b"\n", max_line_bytes=len(line)).ok
    assert not validate(line + b"\n", max_line_bytes=len(line) - 1).ok


def test_line_over_limit_is_reported_without_buffering_it():
    # 50 MB on one line, delivered in fresh 1 MiB chunks as a file read would: the validator
    # may hold about one line limit plus one chunk, never the line.
    chunks = 50
    tail = b'"}\n' + TEXT + b"\n"
    sent = []

    def read(n: int) -> bytes:
        if len(sent) == 0:
            piece = b'{"text": "' + b"x" * (n - 10)
        elif len(sent) <= chunks:
            piece = b"x" * n
        elif len(sent) == chunks + 1:
            piece = tail
        else:
            piece = b""
        sent.append(len(piece))
        return piece

    tracemalloc.start()
    try:
        report = validate_stream(read, max_line_bytes=MiB, max_file_bytes=1 << 40)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sent) > 50 * MiB
    assert report.problems == (
        Problem(1, f"line is longer than the limit of {MiB} bytes (spool.max_line_bytes)"),
    )
    assert report.records == 1
    assert report.size == sum(sent)
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_file_over_limit_is_reported_and_reading_stops_there():
    data = (TEXT + b"\n") * 1000  # 27 kB
    limit = 5000
    received = []
    source = io.BytesIO(data)
    report = validate_stream(source.read, max_line_bytes=4096, max_file_bytes=limit,
                             sink=received.append, chunk_size=1024)
    assert report.problems[0] == Problem(
        0, f"file is larger than the limit of {limit} bytes (spool.max_file_bytes); "
           "split it or raise the limit")
    assert report.problem_count == 1  # the line cut at the limit is not blamed for it
    assert sum(map(len, received)) <= limit + 1024
    assert source.tell() <= limit + 1024
    assert report.size == sum(map(len, received))
    assert report.records == limit // len(TEXT + b"\n")


def test_feed_says_stop_once_the_file_is_over_the_limit():
    validator = Validator(max_line_bytes=100, max_file_bytes=10)
    assert validator.feed(b"\n" * 10) is True
    assert validator.feed(b"\n") is False
    assert validator.feed(b"ignored") is False
    assert validator.finish().size == 11


def test_file_exactly_at_the_limit_is_accepted(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(TEXT + b"\n")
    assert validate_path(path, max_line_bytes=100, max_file_bytes=len(TEXT) + 1).ok
    report = validate_path(path, max_line_bytes=100, max_file_bytes=len(TEXT))
    assert "spool.max_file_bytes" in only_problem(report).reason


def test_whole_file_problems_are_listed_before_line_problems():
    data = b"{}\n" * 100
    report = validate(data, max_file_bytes=len(data) - 1)
    assert report.problems[0].line == 0
    assert "spool.max_file_bytes" in report.problems[0].reason
    assert len(report.problems) == MAX_PROBLEMS_LISTED
    assert report.problem_count == 100  # 99 whole lines checked, plus the size


def test_empty_file_is_a_problem():
    report = validate(b"")
    assert report.problems == (Problem(0, "file is empty"),)
    assert report.size == 0


@pytest.mark.parametrize("data", [b"\n", b"\n\n  \n\t\r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n\n"])
def test_file_with_only_blank_lines_has_no_records(data):
    assert validate(data).problems == (Problem(0, "file has no records, only blank lines"),)


def test_no_records_is_not_added_on_top_of_line_problems():
    assert validate(b"{}\n[]\n").problem_count == 2


# --- what a file may look like ---------------------------------------------------------------


def test_bom_at_the_start_is_skipped():
    report = validate(b"\xef\xbb\xbf" + TEXT + b"\n" + CHAT + b"\n")
    assert report.ok and report.records == 2


def test_bom_elsewhere_is_invalid_json():
    problem = only_problem(validate(TEXT + b"\n\xef\xbb\xbf" + TEXT + b"\n"))
    assert problem.line == 2 and problem.reason.startswith("invalid JSON")


def test_problem_after_a_bom_is_still_diagnosed():
    problem = only_problem(validate(b'\xef\xbb\xbf{"text": ""}\n'))
    assert problem == Problem(1, '"text" is empty')


def test_crlf_line_endings_are_accepted():
    report = validate(b"\r\n".join([CHAT, TEXT, b"", PROMPT]) + b"\r\n")
    assert report.ok and report.records == 3


def test_last_line_may_lack_a_newline():
    report = validate(TEXT + b"\n" + CHAT)
    assert report.ok and report.records == 2


def test_last_line_without_newline_is_still_checked():
    assert only_problem(validate(TEXT + b"\n" + b'{"text": 1}')).line == 2


def test_blank_lines_are_skipped_but_still_numbered():
    report = validate(b"\n".join([b"", TEXT, b"   ", b"\t", b"", b"{}"]))
    assert report.records == 1
    assert only_problem(report).line == 6


# --- the report -------------------------------------------------------------------------------


def test_only_the_first_problems_are_listed_but_all_are_counted():
    report = validate(b"{}\n" * 25 + TEXT + b"\n")
    assert report.problem_count == 25
    assert len(report.problems) == MAX_PROBLEMS_LISTED == 20
    assert [p.line for p in report.problems] == list(range(1, 21))
    assert report.records == 1
    assert not report.ok


def test_sha256_and_size_cover_exactly_the_bytes_read(tmp_path):
    data = b"\xef\xbb\xbf" + b"\r\n".join([CHAT, b"not json", TEXT] * 500)
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    for report in (validate(data), validate_path(path, **LIMITS)):
        assert report.sha256 == hashlib.sha256(data).hexdigest()
        assert report.size == len(data)


def test_sink_receives_exactly_what_was_validated():
    data = (CHAT + b"\n") * 3000
    received = []
    report = validate_stream(io.BytesIO(data).read, sink=received.append, chunk_size=1000, **LIMITS)
    assert b"".join(received) == data
    assert report.sha256 == hashlib.sha256(b"".join(received)).hexdigest()


def test_describe_names_the_file_and_line_like_a_compiler():
    report = Report(records=0, size=10, sha256="0" * 64, problem_count=3, problems=(
        Problem(0, "file is larger than the limit"),
        Problem(7, "invalid JSON: unexpected end of data (column 3)"),
    ))
    assert report.describe("in/data.jsonl") == [
        "in/data.jsonl: file is larger than the limit",
        "in/data.jsonl:7: invalid JSON: unexpected end of data (column 3)",
        "... and 1 more problem",
    ]


def test_describe_counts_the_problems_left_out():
    lines = validate(b"[]\n" * 45).describe("f")
    assert len(lines) == 21
    assert lines[0] == "f:1: expected a JSON object, got a list"
    assert lines[-1] == "... and 25 more problems"


def test_describe_of_a_good_file_is_empty():
    report = validate(TEXT)
    assert report.ok and report.describe("f") == []


@pytest.mark.parametrize("limits, key", [
    ({"max_line_bytes": 0, "max_file_bytes": 10}, "spool.max_line_bytes"),
    ({"max_line_bytes": 10, "max_file_bytes": -1}, "spool.max_file_bytes"),
])
def test_impossible_limits_are_refused_naming_the_key(limits, key):
    with pytest.raises(ValueError, match=key):
        Validator(**limits)


# --- chunk boundaries -------------------------------------------------------------------------

MIXED = b"".join([
    b"\xef\xbb\xbf", CHAT, b"\r\n", b"\n", TEXT, b"\n", b'{"text": "caf\xc3\xa9 \xe6\x95\xb0"}\n',
    b"{}\n", b"\xff\n", orjson.dumps({"text": "y" * 300}), b"\n", b"  \n", PROMPT, b"\n",
    b'{"messages": [{"role": "bot", "content": "x"}]}\r\n', b'{"text": "unterminated\n', CHAT,
])


def test_feeding_byte_by_byte_gives_the_same_report_as_one_read():
    whole = validate(MIXED, max_line_bytes=200)
    assert whole.records == 5 and whole.problem_count == 5  # the fixture covers both paths
    assert validate_in_chunks(MIXED, [1], max_line_bytes=200) == whole


@pytest.mark.parametrize("seed", range(20))
def test_feeding_random_chunk_sizes_gives_the_same_report_as_one_read(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 400) for _ in range(50)]
    assert validate_in_chunks(MIXED, sizes, max_line_bytes=200) == validate(MIXED, max_line_bytes=200)


# --- fuzzing ----------------------------------------------------------------------------------


def is_training_record(value) -> bool:
    """The accepted shapes, written out plainly as the reference the validator must agree with."""
    if not isinstance(value, dict):
        return False
    shapes = [
        "messages" in value,
        "text" in value,
        "prompt" in value or "completion" in value,
    ]
    if sum(shapes) != 1:
        return False
    if "messages" in value:
        turns = value["messages"]
        if not isinstance(turns, list) or not turns:
            return False
        for turn in turns:
            if not isinstance(turn, dict):
                return False
            if not isinstance(turn.get("role"), str) or turn["role"] not in {"system", "user", "assistant", "tool"}:
                return False
            if not isinstance(turn.get("content"), str):
                return False
        return any(t["role"] == "assistant" and t["content"].strip() for t in turns)
    if "text" in value:
        return isinstance(value["text"], str) and bool(value["text"].strip())
    return (
        isinstance(value.get("prompt"), str)
        and isinstance(value.get("completion"), str)
        and bool(value["completion"].strip())
    )


def assert_well_formed(report: Report, line_count: int) -> None:
    assert len(report.problems) <= MAX_PROBLEMS_LISTED
    assert report.problem_count >= len(report.problems)
    assert report.ok == (report.problem_count == 0)
    assert all(0 <= p.line <= line_count and p.reason for p in report.problems)
    assert report.records + report.problem_count <= line_count + 1


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "bot", "", "Assistant"]) | json_values
contents = st.sampled_from(["", " ", "hi", "\n\t", "ok\u00e9"]) | json_values
turns = st.fixed_dictionaries({}, optional={"role": roles, "content": contents, "name": json_values})
good_turns = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                    "content": st.text(max_size=8)})
likely_records = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(good_turns, min_size=1, max_size=4)}),
    st.fixed_dictionaries({"text": st.text(max_size=8)}),
    st.fixed_dictionaries({"prompt": st.text(max_size=8), "completion": st.text(max_size=8)}),
)
nearly_records = st.one_of(
    likely_records,
    st.fixed_dictionaries({"messages": st.lists(turns, max_size=4) | json_values},
                          optional={"text": json_values, "id": json_values}),
    st.fixed_dictionaries({"text": contents}, optional={"prompt": contents, "meta": json_values}),
    st.fixed_dictionaries({}, optional={"prompt": contents, "completion": contents, "x": json_values}),
    json_values,
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(nearly_records, max_size=30),
       newline=st.sampled_from([b"\n", b"\r\n"]),
       sizes=st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_validator_agrees_with_the_plain_reference_on_any_json(values, newline, sizes):
    data = b"".join(orjson.dumps(v) + newline for v in values)
    report = validate(data)
    expected_bad = [n for n, v in enumerate(values, 1) if not is_training_record(v)]
    assert report.records == len(values) - len(expected_bad)
    if values and not expected_bad:
        assert report.ok
    if expected_bad:
        assert report.problem_count == len(expected_bad)
        assert [p.line for p in report.problems] == expected_bad[:MAX_PROBLEMS_LISTED]
    assert_well_formed(report, len(values))
    assert validate_in_chunks(data, sizes) == report


@settings(max_examples=500, deadline=None)
@given(value=nearly_records)
def test_fast_and_thorough_record_checks_agree_with_the_reference(value):
    # The validator asks _plainly_valid first and _record_problem only when it says no: the
    # fast check may be unsure, but it must never accept a bad record.
    expected = is_training_record(value)
    assert (_record_problem(value) is None) == expected
    assert not _plainly_valid(value) or expected


line_bytes = st.binary(max_size=40) | st.sampled_from(
    [b"", b"{}", b"\r", b"\xef\xbb\xbf", b'{"text": "a"}', b'{"messages": [', b"\xc3", b"]"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(line_bytes | st.just(b"\n"), max_size=40),
       max_line_bytes=st.integers(1, 64),
       max_file_bytes=st.integers(0, 2000),
       sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_arbitrary_bytes_never_raise_and_give_a_well_formed_report(
        pieces, max_line_bytes, max_file_bytes, sizes):
    data = b"".join(pieces)
    limits = {"max_line_bytes": max_line_bytes, "max_file_bytes": max_file_bytes}
    report = validate(data, **limits)
    assert_well_formed(report, data.count(b"\n") + 1)
    assert report.size == min(len(data), max_file_bytes + 1)
    assert report.sha256 == hashlib.sha256(data[:report.size]).hexdigest()
    chunked = validate_in_chunks(data, sizes, **limits)
    if len(data) <= max_file_bytes:
        assert chunked == report
    else:
        # Fed by hand, the chunk that crosses the limit is hashed whole; what is checked is
        # still cut at the limit, so the problems must agree.
        assert (chunked.records, chunked.problems, chunked.problem_count) == (
            report.records, report.problems, report.problem_count)


# --- one format per file ----------------------------------------------------------------------

SHAREGPT = b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}'
ALPACA = b'{"instruction": "Add.", "input": "2+2", "output": "4"}'
PAIR = (b'{"prompt": [{"role": "user", "content": "Hi"}], '
        b'"completion": [{"role": "assistant", "content": "Hello."}]}')
TOOL_CHAT = (b'{"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": null, '
             b'"tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]}, '
             b'{"role": "tool", "content": "sun"}, {"role": "assistant", "content": "Sunny."}]}')
PREFERENCE = b'{"prompt": "2+2=", "chosen": "4", "rejected": "5"}'


@pytest.mark.parametrize("line, name", [
    (SHAREGPT, "sharegpt"), (ALPACA, "alpaca"), (PAIR, "conversational prompt/completion"),
    (TOOL_CHAT, "messages"), (CHAT, "messages"), (TEXT, "text"), (PROMPT, "prompt/completion"),
])
def test_a_files_format_is_detected_and_reported(line, name):
    report = validate(b"\n".join([line] * 3) + b"\n")
    assert report.ok, report.problems
    assert (report.records, report.formats) == (3, (name,))


def test_the_formats_accepted_side_by_side_before_may_still_share_a_file():
    report = validate(b"\n".join([TEXT, CHAT, PROMPT, CHAT]) + b"\n")
    assert report.ok and report.formats == ("messages", "text", "prompt/completion")


@pytest.mark.parametrize("first, other, field", [
    (SHAREGPT, ALPACA, "instruction"),
    (ALPACA, SHAREGPT, "conversations"),
    (CHAT, SHAREGPT, "conversations"),
    (SHAREGPT, CHAT, "messages"),
    (PROMPT, PAIR, "prompt"),
    (PAIR, PROMPT, "prompt"),
])
def test_a_record_of_another_format_is_a_problem_naming_its_line_and_field(first, other, field):
    report = validate(b"\n".join([first, first, other, first]) + b"\n")
    problem = only_problem(report)
    assert problem.line == 3
    assert f'(it has "{field}") in a file of ' in problem.reason and "records (line 1)" in problem.reason
    assert "a file holds one format; split it into one file per format" in problem.reason
    assert report.records == 3


def test_the_first_valid_record_sets_the_format_and_a_broken_one_is_its_own_problem():
    broken = b'{"conversations": [{"from": "bot", "value": "x"}]}'
    report = validate(b"\n".join([broken, ALPACA, ALPACA]) + b"\n")
    assert only_problem(report).line == 1 and 'from "bot" is not one of' in only_problem(report).reason
    assert report.formats == ("alpaca",)


def test_a_file_of_preference_pairs_is_refused_in_one_line_and_every_pair_counted():
    report = validate(b"\n".join([PREFERENCE] * 50) + b"\n")
    assert report.records == 0 and report.problem_count == 50
    assert [p.line for p in report.problems] == [1]
    assert report.problems[0].reason.startswith("preference pairs (chosen/rejected) are not supported yet: ")


@pytest.mark.parametrize("seed", range(4))
def test_a_file_of_a_new_format_gives_the_same_report_in_any_chunks(seed):
    rng = random.Random(seed)
    lines = [SHAREGPT] + [rng.choice([ALPACA, b"", b"{}"]) if rng.random() < 0.2 else SHAREGPT for _ in range(60)]
    data = b"\n".join(lines) + b"\n"
    whole = validate(data, record_digests=True)
    assert whole.records == lines.count(SHAREGPT) and whole.problem_count == lines.count(ALPACA) + lines.count(b"{}")
    assert len(whole.digests) == 8 * whole.records
    sizes = [rng.randint(1, 300) for _ in range(20)]
    assert validate_in_chunks(data, sizes, record_digests=True) == whole


def test_digests_are_taken_per_valid_record_only_when_asked():
    data = b"\n".join([SHAREGPT, b"{}", SHAREGPT + b"  \r", b"", SHAREGPT]) + b"\n"
    assert validate(data).digests is None
    report = validate(data, record_digests=True)
    line_digest = hashlib.sha256(SHAREGPT).digest()[:8]
    assert report.digests == line_digest * 3  # the CR and spaces JSON ignores are not part of it
