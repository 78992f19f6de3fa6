"""Records to training examples: token ids and which tokens the model learns to produce.

Which format a record is in, and what of it is learned, is trainer.intake.formats' business:
it turns every valid record into one of two forms, and this module encodes those:

- `Chat`: rendered by the tokenizer's chat template, with its tools; loss on assistant turns
  only, from ``learn_from`` on (exact, from the template's ``{% generation %}`` markers, or
  else by rendering each prefix of the conversation and taking what every assistant turn
  adds). Tool calls and results go to a template that handles them as they are, and as text
  to one that does not (trainer.train.tool_text);
- `Plain`: BOS, the pieces tokenized one by one, EOS; loss on the learned pieces and EOS
  (``text`` is one learned piece; ``prompt``/``completion`` the prompt unlearned, then the
  completion learned).

An example over ``max_length`` tokens is truncated or rejected, as configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from trainer.intake.formats import Chat, Piece, Plain, normalise
from trainer.train import tool_text

IGNORE = -100  # the label PyTorch's cross-entropy skips

_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass(frozen=True, slots=True)
class Example:
    """``labels[t]`` is the token the model should predict after reading ``input_ids[:t+1]``
    (the next token), or IGNORE where nothing is learned."""

    input_ids: list[int]
    labels: list[int]

    @property
    def target_count(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def labels_from_mask(ids: list[int], learn: list[bool]) -> list[int]:
    """Next-token labels: position t predicts ids[t+1] when that token is to be learned."""
    labels = [ids[t + 1] if learn[t + 1] else IGNORE for t in range(len(ids) - 1)]
    labels.append(IGNORE)
    return labels


def hf_labels(example: Example) -> list[int]:
    """The same targets in Hugging Face's convention (labels aligned with the inputs; the
    model shifts them itself), for comparing against transformers.Trainer."""
    return [IGNORE] + [example.input_ids[t + 1] if example.labels[t] != IGNORE else IGNORE
                       for t in range(len(example.input_ids) - 1)]


@dataclass
class TokenStats:
    """What encoding an item's records found, kept in the item's metadata."""

    examples: int = 0
    truncated: int = 0
    rejected: int = 0  # over max_length with overlong = "reject"
    no_target: int = 0  # nothing to learn left (e.g. the answer was truncated away)
    target_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def add(self, example: Example | None, *, truncated: bool) -> None:
        if example is None:
            self.rejected += 1
            return
        self.examples += 1
        self.truncated += truncated
        targets = example.target_count
        self.target_tokens += targets
        self.no_target += targets == 0
        self.lengths.append(len(example.input_ids))

    def summary(self) -> dict:
        ordered = sorted(self.lengths)
        count = len(ordered)
        return {
            "examples": self.examples, "truncated": self.truncated, "rejected": self.rejected,
            "no_target": self.no_target, "target_tokens": self.target_tokens,
            "tokens": sum(ordered),
            "mean": round(sum(ordered) / count, 1) if count else 0,
            "p95": ordered[min(count - 1, int(0.95 * count))] if count else 0,
            "max": ordered[-1] if count else 0,
        }


class RecordEncoder:
    def __init__(self, tokenizer, *, max_length: int, overlong: str = "truncate") -> None:
        if overlong not in ("truncate", "reject"):
            raise ValueError(f"overlong must be 'truncate' or 'reject', got {overlong!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.overlong = overlong
        template = tokenizer.chat_template or ""
        # The block tag, not the word: every template that takes add_generation_prompt says
        # "generation", and one without the markers gives an all-false mask (nothing learned).
        self._exact_chat_mask = _GENERATION_TAG.search(template) is not None
        self._native_tools = tool_text.template_handles_tools(template)
        self._bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self._eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _plain(self, pieces: tuple[Piece, ...]) -> tuple[list[int], list[bool]]:
        ids, learn = list(self._bos), [False] * len(self._bos)
        for piece in pieces:
            tokens = self._tokens(piece.text)
            ids += tokens
            learn += [piece.learned] * len(tokens)
        return ids + self._eos, learn + [True] * len(self._eos)

    def _chat(self, form: Chat) -> tuple[list[int], list[bool]]:
        messages, tools, learn_from = form.messages, form.tools, form.learn_from
        if not self._native_tools and (tools or any(t["role"] == "tool" or t.get("tool_calls") for t in messages)):
            messages, learn_from = tool_text.as_text(messages, tools, learn_from)
            tools = None
        options = {"tools": tools} if tools else {}
        if self._exact_chat_mask:
            out = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True, **options)
            ids, learn = list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]
            if learn_from:
                # The context's assistant turns are not learned: cut before the rendered context.
                cut = len(self._render(messages[:learn_from], **options))
                learn[:cut] = [False] * min(cut, len(learn))
            return ids, learn
        # No generation markers: an assistant turn is what rendering it adds to the prefix
        # rendered with its generation prompt (so the role header itself is not learned).
        ids: list[int] = []
        learn: list[bool] = []

        def extend(rendered_ids: list[int], learned: bool) -> None:
            new = rendered_ids[len(ids):]
            ids.extend(new)
            learn.extend([learned] * len(new))

        for end in range(1, len(messages) + 1):
            answer = messages[end - 1]["role"] == "assistant" and end > learn_from
            if answer:
                extend(self._assistant_header(messages[:end], options), False)
            extend(self._render(messages[:end], **options), answer)
        return ids, learn

    def _render(self, messages: list[dict], **options) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                       **options)["input_ids"])

    def _assistant_header(self, conversation: list[dict], options: dict) -> list[int]:
        """The conversation's ids up to where its last turn's (an assistant's) content begins."""
        if len(conversation) > 1:
            return self._render(conversation[:-1], add_generation_prompt=True, **options)
        # A conversation may open with the assistant, but transformers refuses to render an
        # empty one with the generation prompt: the header is then what the turn rendered
        # with two different contents has in common.
        turn = conversation[0]
        one = self._render([{**turn, "content": "a"}], **options)
        other = self._render([{**turn, "content": "b"}], **options)
        shared = next((i for i, (x, y) in enumerate(zip(one, other)) if x != y), min(len(one), len(other)))
        return one[:shared]

    def encode(self, record: dict) -> tuple[Example | None, bool]:
        """The example for one validated record and whether it was truncated (None: rejected)."""
        match normalise(record):
            case Chat() as chat:
                ids, learn = self._chat(chat)
            case Plain(pieces):
                ids, learn = self._plain(pieces)
            case form:
                raise TypeError(f"no encoding for {type(form).__name__}")
        truncated = len(ids) > self.max_length
        if truncated:
            if self.overlong == "reject":
                return None, False
            ids, learn = ids[: self.max_length], learn[: self.max_length]
        return Example(ids, labels_from_mask(ids, learn)), truncated
