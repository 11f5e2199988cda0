"""Write a trained model as a Hugging Face model folder anyone can load with plain transformers.

Sources: a Composer pretraining checkpoint (`runs/<run>/checkpoints/*.pt`, MosaicBERT pruned or not, or the
`hf_bert` baseline) or a model folder this package saved (a GLUE job's fine-tuned classifier). The folder gets
`config.json`, `model.safetensors`, the tokenizer, a model card, and for MosaicBERT the package's own
`configuration_mosaicbert.py` and `modeling_mosaicbert.py` named in `auto_map` (copied by `save_pretrained`,
so they are the code this package runs). Everything is written to a staging folder beside the output and
checked there in a separate process (parity.py) before it takes the output's name: an interrupted or failed
export leaves no folder that looks complete, and an existing one is replaced only when asked.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mosaicbert.data.tokenizer import build_tokenizer
from mosaicbert.errors import UserError
from mosaicbert.export.model_card import CardFacts, read_json, render_model_card
from mosaicbert.export.parity import ParityReport, check_parity
from mosaicbert.model.loading import (CLASSIFIERS, MASKED_LMS, TOKEN_CLASSIFIERS, load_pretrained, loading_key_names,
                                     read_source)


# A saved folder's head, by the class its config.json's `architectures` names: (model classes, Auto class).
FOLDER_HEADS = {"ForSequenceClassification": (CLASSIFIERS, "AutoModelForSequenceClassification"),
                "ForTokenClassification": (TOKEN_CLASSIFIERS, "AutoModelForTokenClassification")}


@dataclass
class TrainedModel:
    """A trained model (to export, or to evaluate) and what is known about how it was made."""

    model: torch.nn.Module
    model_name: str
    auto_class: str
    tokenizer_name: str | None
    max_seq_len: int
    card: dict[str, Any]  # CardFacts fields found on the way
    repo_root: Path | None = None  # where the run ran, for its relative paths (tokenizer)


def _loaded(model, info, source: str) -> torch.nn.Module:
    problems = [*info["missing_keys"], *info["unexpected_keys"], *loading_key_names(info["mismatched_keys"])]
    # The tied decoder weight is the word embeddings', saved once.
    problems = [key for key in problems if key not in ("cls.decoder.weight", "cls.predictions.decoder.weight")]
    if problems:
        raise UserError(f"{source} does not match its own architecture (e.g. weight {problems[0]}); "
                        "was the checkpoint or its model_config.json edited?")
    return model


def _run_folder(checkpoint: Path) -> Path | None:
    return next((folder for folder in (checkpoint.parent, checkpoint.parent.parent)
                 if (folder / "config.yaml").is_file()), None)


def _mlm_eval(run_folder: Path, batch: int, masking: float | None) -> dict[str, Any] | None:
    """The evaluation logged at the checkpoint's step, else the last one before it."""
    found = None
    metrics = run_folder / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed run
            continue
        if "metrics/eval/MaskedAccuracy" in entry and entry.get("step", batch + 1) <= batch:
            found = {"step": entry["step"], "accuracy": entry["metrics/eval/MaskedAccuracy"],
                     "cross_entropy": entry["metrics/eval/LanguageCrossEntropy"], "masking": masking}
    return found


def _glue_results_from(checkpoint: Path, run_folder: Path | None) -> list[dict[str, Any]]:
    """glue_results.json of GLUE runs beside the pretraining run whose jobs started from this very checkpoint file:
    their recorded start (size and modification time of the file, a latest-rank0.pt link followed when they ran)
    is this file's, so a later checkpoint behind the same link, or another working directory, changes nothing."""
    if run_folder is None:
        return []
    identity = [checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns]
    found = []
    for path in sorted(run_folder.parent.glob("*/glue_results.json")):
        starts = [((read_json(job) or {}).get("job") or {}).get("inputs", {}).get("start") or []
                  for job in sorted((path.parent / "results").glob("*.json"))]
        result = read_json(path)
        if result and any(start and start[0][1:] == identity for start in starts):
            found.append(result)
    return found


def read_trained_checkpoint(path: Path) -> TrainedModel:
    source = read_source(str(path))
    checkpoint, model_name = source.checkpoint, source.model_name
    model = _loaded(*load_pretrained(source, model_name, MASKED_LMS, "its weights say"), str(path))
    run_folder = _run_folder(path)
    run_config = OmegaConf.to_container(OmegaConf.load(run_folder / "config.yaml")) if run_folder else None
    stamp = checkpoint["state"].get("timestamp", {}).get("Timestamp")
    timestamp = None if stamp is None else {"batch": stamp["batch"], "sample": stamp["sample"], "token": stamp["token"],
                                            "seconds": stamp["total_wct"].total_seconds()}
    masking = ((run_config or {}).get("eval_loader") or {}).get("mlm_probability")
    card = {"run_config": run_config, "timestamp": timestamp, "metadata": checkpoint["state"].get("metadata"),
            "mlm_eval": _mlm_eval(run_folder, timestamp["batch"], masking) if run_folder and timestamp else None,
            "glue": _glue_results_from(path, run_folder)}
    return TrainedModel(model, model_name, "AutoModelForMaskedLM", (run_config or {}).get("tokenizer_name"),
                  (run_config or {}).get("max_seq_len", 128), card, _repo_root(run_folder, run_config))


def _repo_root(run_folder: Path | None, run_config: dict[str, Any] | None) -> Path | None:
    """The directory a run was started from: its folder minus the relative run_folder its config recorded."""
    recorded = Path((run_config or {}).get("run_folder") or "")
    if run_folder is None or recorded.is_absolute() or not recorded.parts:
        return None
    folder = run_folder.resolve()
    return folder.parents[len(recorded.parts) - 1] if folder.parts[-len(recorded.parts):] == recorded.parts else None


def read_trained_folder(folder: Path) -> TrainedModel:
    """A folder this package saved: a GLUE job's sequence or token classifier (its job record says task, tokenizer
    and scores; its config.json the label names, kept as saved) or an MLM."""
    source = read_source(str(folder))
    model_name = source.model_name
    heads, auto_class = next((head for suffix, head in FOLDER_HEADS.items()
                              if any(name.endswith(suffix) for name in source.architectures)),
                             (MASKED_LMS, "AutoModelForMaskedLM"))
    model = _loaded(*load_pretrained(source, model_name, heads, "the folder's config.json says model_type"), str(folder))
    job = None
    for path in sorted((folder.parent.parent / "results").glob("*.json")):
        result = read_json(path) or {}
        saved = (result.get("job") or {}).get("save_model_dir")
        if saved and Path(saved).exists() and Path(saved).resolve() == folder.resolve():
            job = result
    tokenizer_name = job["job"]["tokenizer_name"] if job else None
    max_seq_len = job["job"]["max_seq_len"] if job else 128
    root = _repo_root(folder, {"run_folder": job["job"]["save_model_dir"]}) if job else None
    return TrainedModel(model, model_name, auto_class, tokenizer_name, max_seq_len, {"classifier_result": job}, root)


def read_trained_model(path: Path) -> TrainedModel:
    """A pretraining checkpoint or a folder this package saved."""
    if not path.exists():
        raise UserError(f"{path} does not exist; give a pretraining checkpoint (runs/<run>/checkpoints/"
                        "latest-rank0.pt) or a model folder (make export's, or runs/<glue run>/models/<job>).")
    return read_trained_folder(path) if path.is_dir() else read_trained_checkpoint(path)


def source_tokenizer(source: TrainedModel, tokenizer_name: str | None, where: Path):
    """(name, tokenizer) of a source: `tokenizer_name`, else its run's, else the folder's own."""
    name = tokenizer_name or source.tokenizer_name
    if name is None and where.is_dir() and (where / "tokenizer_config.json").is_file():
        name = str(where)  # a folder that carries its tokenizer (an earlier export)
    if name is None:
        raise UserError(f"no run record beside {where} says which tokenizer it was trained with; "
                        "name it with --tokenizer (make export TOKENIZER=...).")
    if tokenizer_name is None and source.repo_root is not None and not Path(name).is_absolute() \
            and not Path(name).exists() and (source.repo_root / name).exists():
        name = str(source.repo_root / name)  # the run's relative path, from where it ran
    tokenizer = build_tokenizer(name, source.max_seq_len)
    if len(tokenizer) > source.model.config.vocab_size:
        raise UserError(f"tokenizer {name} has {len(tokenizer)} tokens, more than the model's "
                        f"{source.model.config.vocab_size} embedding rows: it is not the model's tokenizer.")
    return name, tokenizer


def _replaceable(out: Path) -> bool:
    """--overwrite replaces a model folder (or an empty one), never a folder of other things, e.g. `exported/`."""
    if not out.is_dir():
        return False
    return not any(out.iterdir()) or ((out / "config.json").is_file() and not any(p.is_dir() for p in out.iterdir()))


def export_model(source: str, out_dir: str, tokenizer_name: str | None = None, glue: Sequence[str] = (),
                 overwrite: bool = False, check: bool = True,
                 progress: Callable[[str], None] = print) -> ParityReport | None:
    """Export `source` to `out_dir`; returns the parity check's report (None with `check=False`)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UserError(f"{out} already exists; choose another output folder or pass --overwrite "
                            "(make export ... OVERWRITE=1) to replace it.")
        if not _replaceable(out):
            raise UserError(f"{out} is not a model folder (it holds other folders or no config.json); --overwrite "
                            "replaces only an earlier export. Choose the export's own folder, e.g. exported/<name>.")
    path = Path(source)
    progress(f"reading {source}")
    found = read_trained_model(path)
    card = dict(found.card)
    for folder in glue:
        result = read_json(Path(folder) / "glue_results.json")
        if result is None:
            raise UserError(f"--glue {folder} has no readable glue_results.json; point it at a GLUE run folder.")
        card["glue"] = [*card.get("glue", []), result]
    name, tokenizer = source_tokenizer(found, tokenizer_name, path)
    model = found.model
    model.config.tokenizer_class = type(tokenizer).__name__  # pipeline() loads the tokenizer for remote-code models by it
    if found.model_name == "mosaic_bert":
        model.config.attention_backend = "auto"  # FlashAttention where it can run, SDPA everywhere else
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    folder = staging / out.name  # the final name: transformers names the folder's code module after it
    try:
        progress(f"writing {folder}")
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        facts = CardFacts(name=out.name, model_name=found.model_name, auto_class=found.auto_class,
                          config=model.config.to_dict(), parameters=sum(p.numel() for p in model.parameters()),
                          tokenizer=name, tokenizer_size=len(tokenizer), source=path.resolve().name, **card)
        (folder / "README.md").write_text(render_model_card(facts))
        report = None
        if check:
            progress("checking the folder with plain transformers in a separate process")
            report = check_parity(model, tokenizer, folder, found.auto_class)
            progress(f"parity: {report.describe()}")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
