"""Tool calls and tool results for a chat template that knows nothing of them.

A template that handles tools (it reads ``tool_calls``; most recent instruct models' do) gets
the turns and the tool definitions as they are, through ``apply_chat_template(tools=...)``.
One that does not (the demo model's, older models') would drop a call, whose content is
often empty, and may refuse the "tool" role; for it the tools are written into the turns as
text, in the tags Hermes-style templates use, so what the model learns to say is the call:

- the tool definitions: appended to the system turn (one made if there is none) as
  ``<tools>`` with one JSON object a line;
- an assistant turn's calls: after its content, one ``<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`` each, on lines of their own (learned, like the rest of the turn);
- tool results: a user turn of ``<tool_response>...</tool_response>`` blocks, consecutive
  results in one turn (so strict templates still see user and assistant alternate; not learned).

Pure functions over the normalised turns: no torch, no tokenizer.
"""

from __future__ import annotations

import orjson


def template_handles_tools(template: str | None) -> bool:
    """Whether a chat template renders tool calls itself: it reads the turns' ``tool_calls``."""
    return bool(template) and "tool_calls" in template


def as_text(messages: list[dict], tools: list[dict] | None, learn_from: int = 0) -> tuple[list[dict], int]:
    """The turns with tools written as text, and ``learn_from`` moved to match (tool results
    merge into one turn only within the context or within what is learned, never across)."""
    context = _convert(messages[:learn_from])
    learned = _convert(messages[learn_from:])
    turns = context + learned
    if tools:
        listing = "\n".join(orjson.dumps(tool).decode() for tool in tools)
        block = f"You may call these tools:\n<tools>\n{listing}\n</tools>"
        if turns and turns[0]["role"] == "system":
            turns[0] = {**turns[0], "content": f"{turns[0]['content']}\n\n{block}"}
        else:
            turns.insert(0, {"role": "system", "content": block})
            context.insert(0, turns[0])
    return turns, len(context)


def _convert(messages: list[dict]) -> list[dict]:
    turns: list[dict] = []
    for turn in messages:
        role = turn["role"]
        if role == "tool":
            response = f"<tool_response>\n{turn.get('content') or ''}\n</tool_response>"
            if turns and turns[-1].get("_tool_results"):
                turns[-1] = {**turns[-1], "content": f"{turns[-1]['content']}\n{response}"}
            else:
                turns.append({"role": "user", "content": response, "_tool_results": True})
        elif role == "assistant" and turn.get("tool_calls"):
            calls = "\n".join(_call_text(call) for call in turn["tool_calls"])
            content = turn.get("content") or ""
            turns.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        else:
            turns.append(turn)
    return [{k: v for k, v in turn.items() if k != "_tool_results"} if "_tool_results" in turn else turn
            for turn in turns]


def _call_text(call: dict) -> str:
    function = call["function"]
    body = {"name": function["name"], "arguments": function.get("arguments", {})}
    return f"<tool_call>{orjson.dumps(body).decode()}</tool_call>"
