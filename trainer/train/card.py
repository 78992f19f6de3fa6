"""The model card (README.md) of a published version or snapshot: a pure function of its metadata.

A YAML header the Hub and serving tools read (base_model, library_name, tags), then for a
person: what the directory is, its parent, the items that trained it since (the lineage), the
evaluation results when there are any, and how to load it. Torch-free.
"""

from __future__ import annotations

import orjson

CARD_FILE = "README.md"


def _yaml_str(value: str) -> str:
    return orjson.dumps(value).decode()  # a JSON string is a valid YAML scalar


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _header(base_model: str, library: str, tags: list[str]) -> list[str]:
    return ["---", f"base_model: {_yaml_str(base_model)}", f"library_name: {library}",
            "pipeline_tag: text-generation", "tags:", *[f"- {tag}" for tag in tags], "---", ""]


def _lineage_lines(meta: dict) -> list[str]:
    lineage = meta.get("lineage") if isinstance(meta.get("lineage"), dict) else None
    if lineage is None:
        return ["No lineage was recorded for this version (made before lineage was kept).", ""]
    steps = lineage.get("steps") or [None, None]
    items = lineage.get("items") or []
    lines = [f"Trained since `{meta.get('parent', 'base')}` on {len(items)} completed item(s), global steps "
             f"{steps[0]}-{steps[1]} (base model `{lineage.get('base')}`, config hash `{lineage.get('config_hash')}`).",
             ""]
    if items:
        lines += ["| item | file | records | tokens | steps | sha256 |", "|---|---|---|---|---|---|"]
        for item in items:
            lines.append(f"| {_cell(item.get('id'))} | {_cell(item.get('name'))} | {_cell(item.get('records'))} | "
                         f"{_cell(item.get('tokens'))} | "
                         f"{_cell(item.get('first_step'))}-{_cell(item.get('last_step'))} | "
                         f"{_cell(str(item.get('sha256') or '')[:12])} |")
        lines.append("")
    partial = lineage.get("partial") or []
    if partial:
        lines += ["Also in these weights, items left mid-way (skipped or failed): "
                  + ", ".join(f"{_cell(p.get('id'))} (steps {p.get('first_step')}-{p.get('last_step')})"
                              for p in partial) + ".", ""]
    return lines


def _eval_lines(meta: dict) -> list[str]:
    evaluation = meta.get("eval") if isinstance(meta.get("eval"), dict) else None
    sets = (evaluation or {}).get("sets")
    if not isinstance(sets, dict) or not sets:
        return []
    lines = ["## Evaluation", "", "| set | loss | perplexity | token accuracy | tokens |", "|---|---|---|---|---|"]
    for name, result in sorted(sets.items()):
        result = result if isinstance(result, dict) else {}
        lines.append(f"| {_cell(name)} | {_number(result.get('loss'))} | {_number(result.get('perplexity'), 2)} | "
                     f"{_number(result.get('token_accuracy'))} | {_cell(result.get('tokens'))} |")
    gate = evaluation.get("gate") if isinstance(evaluation.get("gate"), dict) else None
    if gate:
        verdict = "passed" if gate.get("passed") else f"held back: {gate.get('reason')}"
        lines += ["", f"Regression gate (against `{gate.get('compared_with')}`): {verdict}."]
    return lines + [""]


def render(meta: dict, *, name: str, base_model: str, adapter: bool = False) -> str:
    """The card for directory ``name`` (``adapter``: the LoRA adapter alone, for PEFT)."""
    kind = meta.get("kind", "version")
    tags = ["trainer", "text-generation", *(["lora"] if meta.get("lora") else []), kind]
    what = (f"The LoRA adapter of `{name}`: apply it to `{base_model}` with PEFT." if adapter else
            f"`{name}`, a {'consolidated version' if kind == 'consolidated' else kind} made by trainer at global "
            f"step {meta.get('global_step')} ({meta.get('tokens_seen')} tokens seen), "
            f"created {meta.get('created_at')}.")
    load = ('PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "THIS_DIR")' if adapter else
            'AutoModelForCausalLM.from_pretrained("THIS_DIR"); AutoTokenizer.from_pretrained("THIS_DIR")')
    lines = [*_header(base_model, "peft" if adapter else "transformers", tags), f"# {name}", "", what, "",
             "## Lineage", "", *_lineage_lines(meta), *_eval_lines(meta),
             "## Loading", "", "```python", load, "```", ""]
    return "\n".join(lines)
