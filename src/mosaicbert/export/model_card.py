"""The exported folder's README.md: what the model is, how it was trained and how it scored, from the run's own files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosaicbert.export.parity import PIPELINES

PAPERS = {"mosaic_bert": "MosaicBERT ([arXiv 2312.17482](https://arxiv.org/abs/2312.17482))",
          "hf_bert": "BERT ([arXiv 1810.04805](https://arxiv.org/abs/1810.04805)), transformers' `BertForMaskedLM`"}


@dataclass
class CardFacts:
    """Everything the card states; each field read from the checkpoint, the run folder or the model itself."""

    name: str
    model_name: str  # mosaic_bert or hf_bert
    auto_class: str  # AutoModelForMaskedLM, AutoModelForSequenceClassification or AutoModelForTokenClassification
    config: dict[str, Any]
    parameters: int
    tokenizer: str
    tokenizer_size: int
    source: str  # file or folder name of what was exported (a latest-rank0.pt link resolved)
    run_config: dict[str, Any] | None = None  # the run's config.yaml
    timestamp: dict[str, Any] | None = None  # Composer's, at the checkpoint
    metadata: dict[str, Any] | None = None  # Composer's environment record
    mlm_eval: dict[str, Any] | None = None  # the evaluation at the checkpoint's batch
    glue: list[dict[str, Any]] = field(default_factory=list)  # glue_results.json of runs started from it
    classifier_result: dict[str, Any] | None = None  # the GLUE job that wrote an exported classifier


def _widths(config: dict[str, Any]) -> list[str]:
    layers = config["num_hidden_layers"]
    heads = config.get("head_indices_per_layer")
    units = config.get("intermediate_size_per_layer")
    if heads is None and units is None:
        return []
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rows = ["", "Structurally pruned (EarlyBERT): the widths of each layer.", "",
            "| layer | attention heads kept (original numbers) | GeGLU units |", "|---|---|---|"]
    for i in range(layers):
        kept = heads[i] if heads is not None else list(range(config["num_attention_heads"]))
        width = units[i] if units is not None else config["intermediate_size"]
        rows.append(f"| {i} | {len(kept)} of {config['num_attention_heads']} ({', '.join(map(str, kept))}; "
                    f"{len(kept) * head_dim} wide) | {width} of {config['intermediate_size']} |")
    return rows


def _vocab_multiple(facts: CardFacts) -> int | None:
    multiple = ((facts.run_config or {}).get("model") or {}).get("vocab_multiple")
    return multiple if multiple and multiple > 1 and facts.config["vocab_size"] > facts.tokenizer_size else None


def _architecture(facts: CardFacts) -> list[str]:
    c = facts.config
    rows = [f"- {PAPERS[facts.model_name]}",
            f"- {c['num_hidden_layers']} layers, hidden size {c['hidden_size']}, {c['num_attention_heads']} attention heads, "
            f"{'GeGLU width' if facts.model_name == 'mosaic_bert' else 'feed-forward width'} {c['intermediate_size']}",
            f"- {facts.parameters:,} parameters",
            f"- vocabulary {c['vocab_size']} rows for a tokenizer of {facts.tokenizer_size} tokens"
            + (f" (padded to a multiple of {multiple})" if (multiple := _vocab_multiple(facts)) else "")]
    if facts.model_name == "mosaic_bert":
        rows += ["- ALiBi attention biases (no position embeddings, so no maximum length is built in), GeGLU "
                 "feed-forward, post-LayerNorm, padding removed inside the model",
                 "- attention: FlashAttention-2 (varlen, with ALiBi slopes) when `flash-attn` is installed and the model "
                 "runs on a GPU in fp16/bf16, otherwise PyTorch SDPA, which also runs on CPU"]
    if facts.auto_class != "AutoModelForMaskedLM":
        kind = "token" if facts.auto_class == "AutoModelForTokenClassification" else "sequence"
        rows.append(f"- {kind} classification head with {c.get('num_labels', len(c.get('id2label', {})))} outputs")
    return rows + _widths(c)


def _training(facts: CardFacts) -> list[str]:
    rows = []
    run = facts.run_config or {}
    loader = run.get("train_loader") or {}
    if loader:
        where = loader.get("remote") or loader.get("local") or run.get("data_remote") or run.get("data_local")
        rows.append(f"- data: split `{loader.get('split')}` of `{where}` (MDS shards), sequences of up to "
                    f"{run.get('max_seq_len')} tokens, {loader.get('mlm_probability', 0.15):.0%} of tokens masked")
    if facts.timestamp:
        t = facts.timestamp
        rows.append(f"- {t['batch']:,} steps, {t['sample']:,} documents, {t['token']:,} tokens seen (non-padding)")
        rows.append(f"- wall-clock training time {t['seconds'] / 60:.1f} min (Composer's training clock, which pauses for evaluation)")
    if run:
        optimizer = run.get("optimizer") or {}
        rows.append(f"- global batch {run.get('global_train_batch_size')}, optimizer {optimizer.get('name')} "
                    f"at lr {optimizer.get('lr')}, seed {run.get('seed')}")
    if facts.metadata:
        m = facts.metadata
        env = m.get("composer_env_info") or {}
        hardware = env.get("gpu_model") if env.get("num_gpus_per_node") else env.get("cpu_model")
        rows.append(f"- trained on {m.get('world_size', 1)} x {m.get('device')} ({hardware}), precision "
                    f"{m.get('precision')}, torch {m.get('torch_version')}, Composer {env.get('composer_version')}")
    if run.get("run_name"):
        rows.append(f"- run `{run['run_name']}`, exported from `{Path(facts.source).name}`")
    if facts.classifier_result:
        r, job = facts.classifier_result, facts.classifier_result["job"]
        hp = r.get("hyperparameters") or {}
        rows += [f"- fine-tuned on GLUE `{r['task']}` ({r.get('train_examples')} training examples) from "
                 f"`{Path(str(job.get('start'))).name}`: {hp.get('epochs')} epochs, lr {hp.get('lr')}, batch "
                 f"{hp.get('batch_size')}, seed {r['seed']}, precision {hp.get('precision')}, "
                 f"{r.get('train_seconds')} s of training"]
    return rows or ["- no run record was found beside the model, so nothing is known about its training here"]


def _glue_table(result: dict[str, Any]) -> list[str]:
    rows = [f"GLUE dev, protocol `{result.get('protocol')}` ({result.get('created')}); scores x100, mean over seeds:",
            "", "| task | score | seeds |", "|---|---|---|"]
    scores = []
    for task, entry in sorted(result.get("tasks", {}).items()):
        seeds = f"{entry.get('seeds_ok', 0)}/{entry.get('seeds_planned', '?')}"
        if entry.get("score") is None:  # every seed of the task failed
            rows.append(f"| {task} | failed | {seeds} |")
            continue
        rows.append(f"| {task} | {entry['score']:.2f} | {seeds} |")
        scores.append(entry["score"])
    if scores:
        rows.append(f"| average of {len(scores)} tasks | {sum(scores) / len(scores):.2f} | |")
    return rows


def _evaluation(facts: CardFacts) -> list[str]:
    rows = []
    if facts.mlm_eval:
        e = facts.mlm_eval
        rows.append(f"- masked-LM on the held-out split at step {e['step']}: accuracy {e['accuracy']:.4f}, "
                    f"cross-entropy {e['cross_entropy']:.4f}" + (f" ({e['masking']:.0%} masking)" if e.get("masking") else ""))
    if facts.classifier_result:
        r = facts.classifier_result
        metrics = "; ".join(f"{split} {name} {value:.4f}" for split, values in r["metrics"].items()
                            for name, value in values.items())
        kind = "own task" if r.get("job", {}).get("own_task") else "GLUE task"
        rows.append(f"- fine-tuned on the {kind} `{r['task']}` (seed {r['seed']}): {metrics}")
    for result in facts.glue:
        rows += ["", *_glue_table(result)]
    return rows or ["- no evaluation results were found for this checkpoint"]


def render_model_card(facts: CardFacts) -> str:
    pipeline_tag = PIPELINES[facts.auto_class]
    remote = facts.model_name == "mosaic_bert"
    load = ", trust_remote_code=True" if remote else ""
    usage = (f'model = {facts.auto_class}.from_pretrained("path/to/{facts.name}"{load})'
             if facts.auto_class != "AutoModelForMaskedLM" else
             f'fill_mask = pipeline("fill-mask", model="path/to/{facts.name}"{load})\n'
             'print(fill_mask("The capital of France is [MASK]."))')
    imports = "from transformers import pipeline" if facts.auto_class == "AutoModelForMaskedLM" else \
        f"from transformers import {facts.auto_class}"
    lines = [
        "---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}",
        f"tags: [{', '.join(['mosaicbert' if remote else 'bert', 'encoder', pipeline_tag])}]", "---", "",
        f"# {facts.name}", "",
        f"A {'MosaicBERT' if remote else 'BERT'} encoder exported from a training run of this repository's recipes."
        + (" The modeling code travels with the weights (`modeling_mosaicbert.py`), so it loads with plain "
           "transformers and `trust_remote_code=True`; read that file before trusting it, as with any remote code."
           if remote else ""),
        "", "## Use", "", "```python", imports, usage, "```", "",
        "## Architecture", "", *_architecture(facts), "",
        "## Tokenizer", "", f"`{facts.tokenizer}`, {facts.tokenizer_size} tokens, saved in this folder.", "",
        "## Training", "", *_training(facts), "",
        "## Evaluation", "", *_evaluation(facts), "",
        "## Files", "",
        "`config.json` (model_type `" + facts.config.get("model_type", facts.model_name) + "`), `model.safetensors` "
        "(weights; no pickles), the tokenizer files" + (", `configuration_mosaicbert.py` and `modeling_mosaicbert.py`"
                                                        if remote else "") + ".", "",
    ]
    return "\n".join(lines)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
