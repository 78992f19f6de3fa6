"""Publishing the model: daily snapshots and consolidated versions, HF-loadable and verified.

    snapshots/2026-11-28/     the day's model (full fine-tuning: config, tokenizer and the
                              checkpoint's weights hard-linked; LoRA: the adapter and its base)
    models/base/              the model training started from (model.path)
    models/v001/ v002/ ...    consolidated versions, each with trainer_version.json
    models/LATEST             the newest version's name

Every publication is staged beside its destination, verified by loading it back and
comparing its output with the model in memory, then renamed into place: an interrupted one
leaves no half snapshot or version, and nothing older is ever touched before the new one is
complete.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import torch

from trainer.errors import NotEnoughSpace
from trainer.spool import candidates
from trainer.spool.fsutil import disk_refusal, free_bytes, fsync_dir, remove_dirs, write_atomic
from trainer.timefmt import iso, utc_now
from trainer.train.engine import WEIGHTS_FILE, Engine

log = logging.getLogger("trainer.publish")

STAGING = ".staging-"
VERSION_FILE = "trainer_version.json"
_WEIGHT_FILES = re.compile(r".*\.(safetensors|bin|pt|pth)$|.*\.safetensors\.index\.json$|.*\.bin\.index\.json$")
_VERSION = re.compile(r"v(\d{3,})")


def _check_space(path: Path, need: int) -> None:
    have = free_bytes(path)
    if have < need:
        raise NotEnoughSpace(path, need, have)


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link an immutable file (instant, no space); copy across filesystems."""
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dest)


def _copy_model_files(model_dir: Path, dest: Path) -> None:
    """Config, tokenizer and chat template of the model trained (not its weights)."""
    for file in model_dir.iterdir():
        if file.is_file() and not _WEIGHT_FILES.fullmatch(file.name) and file.name != VERSION_FILE:
            shutil.copy2(file, dest / file.name)


def _probe_logits(model, tokenizer, device) -> torch.Tensor:
    ids = tokenizer("The quick check of a published model.", return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float().cpu()


def _verify(engine: Engine, directory: Path, *, adapter_base: Path | None = None) -> None:
    """Load the published model back and check it computes what the engine's model does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    base = adapter_base or directory
    loaded = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=engine.model.dtype)
    if adapter_base is not None:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, directory)
    loaded.to(engine.device).eval()
    was_training = engine.model.training
    engine.model.eval()
    try:
        expected = _probe_logits(engine.model, tokenizer, engine.device)
    finally:
        engine.model.train(was_training)
    got = _probe_logits(loaded, tokenizer, engine.device)
    tolerance = 1e-3 if engine.model.dtype == torch.float32 else 5e-2
    if not torch.allclose(got, expected, atol=tolerance, rtol=tolerance):
        raise RuntimeError(f"{directory.name}: the published model does not reproduce the trained one "
                           f"(max difference {float((got - expected).abs().max()):.3g})")


def _export(engine: Engine, dest: Path) -> None:
    """An HF-loadable model dir of the weights in memory (LoRA: the adapter, naming its base)."""
    if engine.is_lora:
        engine.model.save_pretrained(dest)
        config = orjson.loads((dest / "adapter_config.json").read_bytes())
        config["base_model_name_or_path"] = str(engine.model_path)
        (dest / "adapter_config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        engine.tokenizer.save_pretrained(dest)
        return
    checkpoint = engine.current_checkpoint()
    _link_or_copy(checkpoint.path / WEIGHTS_FILE, dest / "model.safetensors")
    _copy_model_files(engine.model_path, dest)


def _weights_size(engine: Engine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def _publish(staging: Path, final: Path) -> None:
    for file in staging.iterdir():
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fsync_dir(staging)
    os.rename(staging, final)
    fsync_dir(final.parent)


def _build_and_publish(staging: Path, final: Path, build: Callable[[Path], None], *, room_needed: int) -> None:
    """Build a publication in ``staging``, then rename it to ``final``. On any failure the
    staging dir is removed; a disk that refused a write (full, over quota, read-only) raises
    ``DiskUnwritable``, whatever library wrapped the OS error (``room_needed``: what the
    publication was expected to take, for when only the free space left can tell)."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        build(staging)
        _publish(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        refused = disk_refusal(exc, staging.parent, room_needed=room_needed) if isinstance(exc, Exception) else None
        if refused is not None:
            raise refused from exc
        raise


def snapshot(engine: Engine, root: Path, day: str, *, keep_days: int) -> Path | None:
    """Take the snapshot for ``day`` (YYYY-MM-DD) unless it exists; returns it (None: existed)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / day
    if final.exists():
        return None
    need = 0 if not engine.is_lora else _weights_size(engine) // 50
    _check_space(root, need)

    def build(staging: Path) -> None:
        _export(engine, staging)
        (staging / VERSION_FILE).write_bytes(orjson.dumps(_provenance(engine, kind="snapshot"),
                                                          option=orjson.OPT_INDENT_2))
        _verify(engine, staging, adapter_base=engine.model_path if engine.is_lora else None)

    _build_and_publish(root / f"{STAGING}{day}", final, build, room_needed=need)
    days = sorted(n for n in os.listdir(root) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", n))  # ISO dates sort by time
    _retain(root, keep_days, days)
    log.info("snapshot %s taken at step %d", day, engine.state.global_step)
    return final


def _provenance(engine: Engine, **extra) -> dict:
    return {"created_at": iso(utc_now()), "global_step": engine.state.global_step,
            "tokens_seen": engine.state.tokens_seen, "items_completed": engine.state.items_completed,
            "smoothed_loss": engine.state.smoothed_loss, "trained_from": str(engine.model_path),
            "lora": engine.is_lora, **extra}


def versions(models: Path) -> list[str]:
    """Published versions, oldest first (by number, never by mtime)."""
    try:
        names = [n for n in os.listdir(models) if _VERSION.fullmatch(n)]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda n: int(n[1:]))


def consolidate(engine: Engine, models: Path, *, keep_versions: int, extra: dict | None = None,
                held_back: bool = False) -> Path:
    """Publish the trained model as the next version ``vNNN``.

    LoRA: the adapter is merged into its base into a full model, verified, and training then
    continues on that version with a fresh adapter. Full fine-tuning: the current weights are
    published (hard-linked from the checkpoint). Earlier versions stay, up to retention.

    ``extra`` is merged into its metadata (evaluation: "eval"). ``held_back``: the regression
    gate refused it: it is published the same way into ``models/.candidates/vNNN`` instead,
    ``LATEST`` is left alone and training goes on as it was (LoRA: no new base).
    """
    models.mkdir(parents=True, exist_ok=True)
    name = candidates.next_version(models)  # numbers count held-back candidates too: never reused
    destination = models / candidates.CANDIDATES if held_back else models
    destination.mkdir(exist_ok=True)
    # A merge writes the whole model; a full fine-tune's publication is a hard link.
    need = _weights_size(engine) + (64 << 20) if engine.is_lora else 16 << 20
    _check_space(models, need)
    parent = Path(engine.state.base).name if engine.state.base else Path(engine.config.model.path).name

    def build(staging: Path) -> None:
        if engine.is_lora:
            merged = _merged_copy(engine)
            merged.save_pretrained(staging)
            engine.tokenizer.save_pretrained(staging)
            del merged
        else:
            _export(engine, staging)
        (staging / VERSION_FILE).write_bytes(orjson.dumps(
            _provenance(engine, kind="consolidated", version=name, parent=parent, **(extra or {})),
            option=orjson.OPT_INDENT_2))
        _verify(engine, staging)

    _build_and_publish(destination / f"{STAGING}{name}", destination / name, build, room_needed=need)
    if held_back:
        log.warning("%s held back by the regression gate (models/%s/%s)", name, candidates.CANDIDATES, name)
        return destination / name
    # The version is published: LATEST must follow it, waiting for the disk if need be (making
    # the version again would publish it twice).
    engine.until_written(lambda: write_atomic(models, models / "LATEST", (name + "\n").encode()))
    if engine.is_lora:
        published = models / name
        engine.rebase(str(published.relative_to(engine.base)) if published.is_relative_to(engine.base)
                      else str(published))
    in_use = Path(engine.state.base).name if engine.state.base else None
    _retain(models, keep_versions, versions(models), {in_use, name})
    log.info("consolidated into %s at step %d", name, engine.state.global_step)
    return models / name


def _merged_copy(engine: Engine):
    """The base with the adapter merged in, as a separate model (the engine's is untouched)."""
    import copy

    clone = copy.deepcopy(engine.model)
    return clone.merge_and_unload()


def _retain(root: Path, keep: int, oldest_first: list[str], protected: set[str | None] = frozenset()) -> list[str]:
    """Delete all but the newest ``keep`` of ``oldest_first`` (0 keeps all), never a protected one."""
    if keep <= 0:
        return []
    doomed = [n for n in oldest_first[: max(0, len(oldest_first) - keep)] if n not in protected]
    remove_dirs(root, doomed)
    return doomed
