"""What the model learns from each record format: the trained (unmasked) tokens, decoded on the
demo model's tokenizer, are exactly the answer text, for every format, with and without the
template's generation markers, and with tool calls rendered natively or as text."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("torch")

from trainer.intake.formats import record_problem  # noqa: E402
from trainer.train.examples import IGNORE, RecordEncoder  # noqa: E402
from trainer.train.tool_text import as_text, template_handles_tools  # noqa: E402

CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
CALL_TEXT = '<tool_call>{"name":"weather","arguments":{"city":"Paris"}}</tool_call>'

# Each record and what the demo template (no tool support: tools become text) makes the model learn.
RECORDS = {
    "messages": ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
                 "4<|end|>"),
    "text": ({"text": "once upon a time"}, "once upon a time<|eos|>"),
    "prompt/completion": ({"prompt": "2+2=", "completion": "4"}, "4<|eos|>"),
    "sharegpt": ({"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "Sunny."}]},
        f"{CALL_TEXT}<|end|>Sunny.<|end|>"),
    "alpaca": ({"instruction": "Add.", "input": "2+2", "output": "4", "system": "Be exact.",
                "history": [["1+1", "2"]]}, "2<|end|>4<|end|>"),
    "conversational prompt/completion": ({
        # The prompt's own assistant turn is context, not learned: only the completion is.
        "prompt": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                   {"role": "user", "content": "and 2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}]}, "4<|end|>"),
    "messages with tools": ({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}], "tools": [WEATHER_TOOL]},
        f"{CALL_TEXT}<|end|>Sunny.<|end|>"),
    "conversational pair with a call": ({
        "prompt": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "tool_calls": [CALL]},
                   {"role": "tool", "content": "sunny"}],
        "completion": [{"role": "assistant", "content": "Sunny."}]}, "Sunny.<|end|>"),
}

# A template that renders tool calls and definitions itself; with generation markers and without.
NATIVE = (
    "{{ bos_token }}"
    "{%- if tools -%}{{ '<|system|>tools: ' + (tools | map(attribute='function') | map(attribute='name') | join(',')) + '<|end|>' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] or '' }}"
    "{%- for call in message.tool_calls or [] -%}{{ '[call ' + call.function.name + ' ' + call.function.arguments.city + ']' }}{%- endfor -%}"
    "{{ '<|end|>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)
NATIVE_LEARNED = {
    "sharegpt": "[call weather Paris]<|end|>Sunny.<|end|>",
    "messages with tools": "[call weather Paris]<|end|>Sunny.<|end|>",
    "conversational pair with a call": "Sunny.<|end|>",
}


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


def encoders(tokenizer, template=None):
    """The encoder with the template's exact mask and the one that finds it by prefixes."""
    if template is not None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = template
    exact = RecordEncoder(tokenizer, max_length=4096)
    by_prefix = RecordEncoder(tokenizer, max_length=4096)
    by_prefix._exact_chat_mask = False
    return tokenizer, (exact, by_prefix)


def learned(tokenizer, encoder, record) -> str:
    example, truncated = encoder.encode(record)
    assert not truncated
    return tokenizer.decode([label for label in example.labels if label != IGNORE],
                            clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", list(RECORDS))
def test_what_each_format_trains_on_is_its_answer_text(tokenizer, name):
    record, expected = RECORDS[name]
    assert record_problem(record) is None
    tokenizer, both = encoders(tokenizer)
    for encoder in both:
        assert learned(tokenizer, encoder, record) == expected


@pytest.mark.parametrize("name", list(NATIVE_LEARNED))
def test_a_template_that_handles_tools_renders_the_calls_itself(tokenizer, name):
    record, _ = RECORDS[name]
    tokenizer, both = encoders(tokenizer, NATIVE)
    for encoder in both:
        assert learned(tokenizer, encoder, record) == NATIVE_LEARNED[name]
    marked, _ = both
    rendered = tokenizer.decode(marked.encode(record)[0].input_ids)
    assert "<tool_call>" not in rendered
    assert ("<|system|>tools: weather<|end|>" in rendered) == ("tools" in record)


def test_without_markers_a_template_that_handles_tools_is_masked_by_prefixes(tokenizer):
    template = NATIVE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tokenizer, (encoder, _) = encoders(tokenizer, template)
    assert not encoder._exact_chat_mask
    for name, expected in NATIVE_LEARNED.items():
        assert learned(tokenizer, encoder, RECORDS[name][0]) == expected


def test_a_template_is_taken_to_handle_tools_when_it_reads_tool_calls(tokenizer):
    assert template_handles_tools(NATIVE)
    assert not template_handles_tools(tokenizer.chat_template) and not template_handles_tools(None)


def test_as_text_merges_consecutive_results_and_keeps_the_context_apart():
    turns = [{"role": "user", "content": "q"},
             {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL, CALL]},
             {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"},
             {"role": "assistant", "content": "done"}]
    converted, learn_from = as_text(turns, [WEATHER_TOOL], learn_from=2)
    call = '<tool_call>{"name":"weather","arguments":"{\\"city\\": \\"Paris\\"}"}</tool_call>'
    assert converted == [
        {"role": "system", "content": 'You may call these tools:\n<tools>\n'
                                      '{"type":"function","function":{"name":"weather","parameters":{"type":"object"}}}'
                                      '\n</tools>'},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": f"Let me look.\n{call}\n{call}"},
        {"role": "user", "content": "<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response>"},
        {"role": "assistant", "content": "done"}]
    assert learn_from == 3  # the system turn added, the results merged after the cut
