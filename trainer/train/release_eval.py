"""What is evaluated when, and with what: at the end of an item, at consolidation, on demand.

- End of an item: its held-out share, by the weights just trained (``holdout``).
- Consolidation (``at_consolidation``): every named eval set and the held-out shares of the
  items done so far, pooled ("holdout"), by the candidate (the weights in memory), by the
  current version and, on the named sets, by the base; then the gate (``gate.decide``) and the
  candidate's sample outputs. A reference's numbers are taken from its metadata when it was
  evaluated on the same set (same sha256), and computed again, loading its weights in this
  process, when the set changed (the held-out pool changes whenever items were done).
- On demand (``on_demand``, ``trainctl eval``): the same sets, for any versions.

Eval records that training data also holds (same record key) are left out of a set and
counted ("contaminated"): scoring the model on what it trained on would flatter it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import torch

from trainer.config import Config
from trainer.errors import UnknownVersion
from trainer.spool import candidates, queue
from trainer.spool.layout import Layout
from trainer.states import ItemState
from trainer import gate
from trainer.train import evalsets
from trainer.train import model as model_io
from trainer.train.evaluate import Scorer, load_dir, samples
from trainer.train.evalsets import HOLDOUT, EvalSet
from trainer.train.examples import RecordEncoder

log = logging.getLogger("trainer.eval")

VERSION_FILE = "trainer_version.json"


def scorer(config: Config, encoder: RecordEncoder, pad_id: int) -> Scorer:
    return Scorer(encoder, config.train.max_length, pad_id, config.train.micro_batch_size, config.eval.max_tokens)


def _done_items(root: Path) -> list[tuple[str, Path, float]]:
    done = []
    for item in queue.list_items(Layout(root), [ItemState.DONE]):
        fraction = ((item.meta.tokens or {}).get("holdout_fraction") or 0.0) if item.meta else 0.0
        if item.data_path.exists():
            done.append((item.id, item.data_path, float(fraction)))
    return done


def eval_sets(root: Path, config: Config) -> list[EvalSet]:
    """The named sets and the held-out pool, each without what training data also holds."""
    items = _done_items(root)
    trained: set[bytes] = set()
    for _, path, fraction in items:
        trained |= evalsets.training_keys(path, fraction)
    sets = []
    for named in evalsets.named_sets(root, config.spool):
        kept, dropped = evalsets.without(named.records, trained)
        if dropped:
            log.warning("eval set %s: %d record(s) also in training data, left out of its numbers",
                        named.name, dropped)
        sets.append(EvalSet(named.name, kept, named.sha256, dropped))
    pool, dropped = evalsets.without(evalsets.holdout_pool(items), trained)
    if pool:
        sets.append(EvalSet(HOLDOUT, pool, evalsets.set_sha256(pool), dropped))
    return sets


def _score_all(score: Scorer, model, device, sets: list[EvalSet]) -> dict[str, dict]:
    out = {}
    for eval_set in sets:
        numbers = score.score(model, device, eval_set.records)
        if numbers is not None:
            out[eval_set.name] = {**numbers, "sha256": eval_set.sha256, "contaminated": eval_set.contaminated}
    return out


def read_version(directory: Path) -> dict:
    try:
        data = orjson.loads((directory / VERSION_FILE).read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


def _reference(directory: Path, sets: list[EvalSet], score: Scorer, dtype, device,
               cache: dict | None = None) -> dict[str, dict]:
    """A published model's numbers on ``sets``: from its metadata (or ``cache``) where the set
    is unchanged, computed (its weights loaded here) for the others."""
    known = dict(((read_version(directory).get("eval") or {}).get("sets") or {}))
    if cache is not None:
        known.update(cache)
    out, missing = {}, []
    for eval_set in sets:
        numbers = known.get(eval_set.name)
        if isinstance(numbers, dict) and numbers.get("sha256") == eval_set.sha256 and "loss" in numbers:
            out[eval_set.name] = numbers
        else:
            missing.append(eval_set)
    if missing:
        model = load_dir(directory, dtype, device)
        out.update(_score_all(score, model, device, missing))
        del model
    if cache is not None:
        cache.update(out)
    return out


def at_consolidation(engine, models: Path) -> dict:
    """The version metadata's "eval" for the weights in memory (``gate.passed`` false: hold it back)."""
    config = engine.config
    score = scorer(config, engine.encoder, engine.pad_id)
    sets = eval_sets(engine.base, config)
    mine = _score_all(score, engine.model, engine.device, sets)
    dtype = next(engine.model.parameters()).dtype
    # A model sharded over the ranks may not fit one device whole: its references (loaded
    # whole, when their numbers are not recorded yet) are scored on rank 0's CPU instead.
    where = torch.device("cpu") if getattr(engine, "sharded", False) else engine.device
    references: dict[str, dict[str, dict]] = {}
    parent = candidates.latest(models)
    if parent is not None and (models / parent).is_dir():
        references[parent] = _reference(models / parent, sets, score, dtype, where)
    named = [s for s in sets if s.name != HOLDOUT]
    base_dir = model_io.model_dir(engine.base, config.model)
    if named and base_dir.is_dir():
        # The base never changes: its numbers are kept in memory and in each version's gate
        # record, so they are computed once per set, not at every consolidation or restart.
        cache = engine.base_eval_cache
        if parent is not None:
            recorded = ((read_version(models / parent).get("eval") or {}).get("gate") or {}).get("references") or {}
            cache.update({k: v for k, v in (recorded.get("base") or {}).items() if k not in cache})
        references["base"] = _reference(base_dir, named, score, dtype, where, cache)
    verdict = gate.decide(mine, references, config.eval.gate_tolerance)
    if not config.eval.gate:
        verdict = gate.Verdict(True, None, verdict.compared_with, verdict.tolerance)
    prompts = evalsets.prompts(engine.base, config.eval.max_prompts)
    outputs = samples(engine.model, engine.tokenizer, engine.device, prompts, config.eval.max_new_tokens)
    return {"sets": mine, "samples": outputs, "gate": verdict.record(references)}


def holdout(engine, data_path: Path, fraction: float) -> dict | None:
    """The item's held-out share scored by the weights in memory (None: nothing held out)."""
    records = evalsets.holdout_records(data_path, fraction)
    if not records:
        return None
    return scorer(engine.config, engine.encoder, engine.pad_id).score(engine.model, engine.device, records)


def resolve(root: Path, config: Config, name: str) -> Path:
    models = root / "models"
    if name == "base":
        return model_io.model_dir(root, config.model)
    for directory in (models / name, models / candidates.CANDIDATES / name):
        if candidates.is_version_name(name) and (directory / "config.json").exists():
            return directory
    raise UnknownVersion(f"{name}: no such version (not in models/ nor models/{candidates.CANDIDATES}/)")


def on_demand(root: Path, config: Config, names: list[str]) -> list[dict]:
    """``trainctl eval``: each version's numbers on every eval set, and its sample outputs."""
    if not names:
        latest = candidates.latest(root / "models")
        names = [latest] if latest else ["base"]
    directories = [(name, resolve(root, config, name)) for name in names]
    device = model_io.resolve_device(config.model.device)
    dtype = model_io.resolve_dtype(config.model.dtype, device)
    torch.manual_seed(0)
    results = []
    sets = None
    for name, directory in directories:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        encoder = RecordEncoder(tokenizer, max_length=config.train.max_length, overlong=config.train.overlong)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sets = sets if sets is not None else eval_sets(root, config)
        model = load_dir(directory, dtype, device)
        prompts = evalsets.prompts(root, config.eval.max_prompts)
        results.append({"version": name, "sets": _score_all(scorer(config, encoder, pad_id), model, device, sets),
                        "samples": samples(model, tokenizer, device, prompts, config.eval.max_new_tokens)})
        del model
    return results
