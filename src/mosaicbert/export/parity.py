"""Does an exported folder compute what the model it came from computes, for someone without this package?

The folder is loaded in a second Python process (`isolated_load.py`, run with `python -I` and unable to
import `mosaicbert`) through transformers' Auto classes with `trust_remote_code=True`. Its logits on a
padded batch of sentences of different lengths, one of them `LONG_INPUT_TOKENS` long where the model's
positions reach that far (always for MosaicBERT's ALiBi), are compared with the source model's, here, in fp32.
That process also runs the pipeline a user would (`pipeline(task, model=folder, trust_remote_code=True)`,
which loads the folder's tokenizer and label names from config.json), one input at a time, unpadded; its
answers must equal what this package reads off the source model for the same inputs:

- masked LM, `fill-mask`: the top token at the [MASK] of `FILL_MASK_TEMPLATE`, against the source model's argmax.
- sequence classification, `text-classification` on every sample text (the pair too, as
  `{"text", "text_pair"}`): the top label, against `id2label[argmax(logits)]`, the GLUE harness's prediction;
  for multi-label heads (problem_type multi_label_classification) the labels whose sigmoid score is above 0.5,
  sorted. Regression heads (num_labels 1) have no label: the logits are all there is to compare.
- token classification, `token-classification` on the single sample texts, twice:
  with `aggregation_strategy="none", ignore_labels=[]`, every non-special token's (index, token, label),
  against `id2label[argmax]` of the source model's logits at that token. The harness's word tags
  (glue/tagging.py `word_tags`) are these labels at each word's first subword, so equal token labels
  mean equal word tags. And with `aggregation_strategy="simple"` (what users call), the entity groups
  (entity_group, start, end), against groups formed from the source model's token labels by the rule that
  strategy documents (`simple_groups`): consecutive tokens of one type (B-/I- prefix removed) without a
  B- after the first make one group, spanning their characters; groups of "O" are dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mosaicbert.errors import UserError

ISOLATED_LOAD = Path(__file__).with_name("isolated_load.py")
# Sentences of different lengths, so the batch is padded; any tokenizer splits them into known pieces.
SAMPLE_TEXTS = (
    "The function returns a new list.",
    "A module is a file containing Python definitions and statements; the file name is the module name.",
    "Read the data.",
    ("Padding is removed inside the model", "and put back at the output, so every position has a value."),
)
FILL_MASK_TEMPLATE = "The value of the {mask} is returned to the caller."
PIPELINES = {"AutoModelForMaskedLM": "fill-mask", "AutoModelForSequenceClassification": "text-classification",
             "AutoModelForTokenClassification": "token-classification"}
MASK_EVERY = 4  # every 4th real, non-special token becomes [MASK] in the masked-LM batch
LONG_INPUT_TOKENS = 1024  # the long row: past BERT's 512 positions, where ALiBi must extrapolate


@dataclass
class ParityReport:
    auto_class: str
    loaded_class: str
    loaded_module: str
    positions: int  # logit rows compared
    max_abs_diff: float
    longest_input: int  # tokens of the batch's longest row
    pipeline: str | None = None  # the task whose pipeline answered as the source model (None: not run)
    pipeline_outputs: list | None = None  # its answers, one per input (see the module docstring)

    def describe(self) -> str:
        text = (f"{self.auto_class} -> {self.loaded_module}.{self.loaded_class}: {self.positions} logit rows of inputs "
                f"up to {self.longest_input} tokens, max |difference| {self.max_abs_diff:.2e}")
        if self.pipeline == "token-classification":
            tokens = sum(len(output["tokens"]) for output in self.pipeline_outputs)
            groups = sum(len(output["groups"]) for output in self.pipeline_outputs)
            text += (f"; token-classification pipeline on {len(self.pipeline_outputs)} texts: {tokens} token labels "
                     f"and {groups} entity groups (aggregation 'simple') as the source model's")
        elif self.pipeline:
            text += f"; {self.pipeline} pipeline: {self.pipeline_outputs} as the source model's"
        return text


def sample_batch(tokenizer, masked_lm: bool, long_input: int | None = None) -> dict[str, torch.Tensor]:
    """A padded batch of `SAMPLE_TEXTS` (one a sentence pair) and, with `long_input`, a row of that many tokens
    (the sample texts repeated), with every `MASK_EVERY`-th token masked for MLM."""
    singles = [t for t in SAMPLE_TEXTS if isinstance(t, str)]
    pairs = [t for t in SAMPLE_TEXTS if not isinstance(t, str)]
    encoded = [tokenizer(text) for text in singles] + [tokenizer(a, b) for a, b in pairs]
    if long_input is not None:
        words = tokenizer(" ".join(singles), add_special_tokens=False)["input_ids"]
        body = (words * (long_input // len(words) + 1))[:long_input - 2]
        encoded.append({"input_ids": [tokenizer.cls_token_id, *body, tokenizer.sep_token_id],
                        "attention_mask": [1] * long_input, "token_type_ids": [0] * long_input})
    length = max(len(row["input_ids"]) for row in encoded)

    def padded(key: str, value: int) -> torch.Tensor:  # right padding, as the training collator pads
        return torch.tensor([row[key] + [value] * (length - len(row[key])) for row in encoded])

    batch = {"input_ids": padded("input_ids", tokenizer.pad_token_id), "attention_mask": padded("attention_mask", 0),
             "token_type_ids": padded("token_type_ids", 0)}
    if masked_lm:
        special = torch.tensor([tokenizer.get_special_tokens_mask(row.tolist(), already_has_special_tokens=True)
                                for row in batch["input_ids"]], dtype=torch.bool)
        maskable = batch["attention_mask"].bool() & ~special
        chosen = maskable & (torch.cumsum(maskable.long(), dim=1) % MASK_EVERY == 0)
        batch["input_ids"] = batch["input_ids"].masked_fill(chosen, tokenizer.mask_token_id)
    return batch


@torch.no_grad()
def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits.float()


def pipeline_inputs(task: str, tokenizer) -> list:
    """What the `task` pipeline is given, as JSON for the other process: a text, or a pair as a list of two."""
    if task == "fill-mask":
        return [FILL_MASK_TEMPLATE.format(mask=tokenizer.mask_token)]
    if task == "text-classification":
        return [text if isinstance(text, str) else list(text) for text in SAMPLE_TEXTS]
    return [text for text in SAMPLE_TEXTS if isinstance(text, str)]  # the pipeline tags single texts


def simple_groups(tokens: list[tuple[str, int, int]]) -> list[list]:
    """[entity_group, start, end] of (label, start, end) tokens, grouped as aggregation_strategy="simple" does."""
    groups, last_type = [], None
    for label, start, end in tokens:
        kind = label[2:] if label.startswith(("B-", "I-")) else label  # a label without a prefix continues
        if groups and kind == last_type and not label.startswith("B-"):
            groups[-1][2] = end
        else:
            groups.append([label.split("-", 1)[-1], start, end])
        last_type = kind
    return [group for group in groups if group[0] != "O"]


def source_output(model: torch.nn.Module, tokenizer, task: str, text: str | list[str]):
    """The source model's answer for one pipeline input, in the form `isolated_load.py` reports the pipeline's."""
    tagging = task == "token-classification"
    encoded = tokenizer(*([text] if isinstance(text, str) else text), return_tensors="pt",
                        return_offsets_mapping=tagging, return_special_tokens_mask=tagging)
    special, offsets = encoded.pop("special_tokens_mask", None), encoded.pop("offset_mapping", None)  # not inputs
    logits = _logits(model, dict(encoded))[0]
    names = model.config.id2label
    if task == "fill-mask":
        return int(logits[encoded["input_ids"][0] == tokenizer.mask_token_id][0].argmax())
    if task == "text-classification":
        if model.config.problem_type == "multi_label_classification":  # the harness: each label whose sigmoid > 0.5
            return sorted(names[index] for index in (torch.sigmoid(logits) > 0.5).nonzero().flatten().tolist())
        return names[int(logits.argmax())]
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    tokens = [(index, names[label]) for index, label in enumerate(logits.argmax(-1).tolist()) if not special[0, index]]
    return {"tokens": [[index, pieces[index], label] for index, label in tokens],
            "groups": simple_groups([(label, *offsets[0, index].tolist()) for index, label in tokens])}


def check_parity(model: torch.nn.Module, tokenizer, folder: str | Path, auto_class: str,
                 atol: float = 1e-5, rtol: float = 1e-4, texts: list | None = None) -> ParityReport:
    """Compare `model` (in eval mode) with `folder` loaded through `transformers.<auto_class>` in a separate
    process, its pipeline on `texts` (default: the sample texts; a pair as a list of two); a UserError says
    what differs or why the folder does not load."""
    masked_lm = auto_class == "AutoModelForMaskedLM"
    per_token = masked_lm or auto_class == "AutoModelForTokenClassification"  # a logit row per real token
    model = model.eval()
    positions = getattr(model.config, "max_position_embeddings", None) if model.config.model_type == "bert" else None
    batch = sample_batch(tokenizer, masked_lm, LONG_INPUT_TOKENS if (positions or LONG_INPUT_TOKENS) >= LONG_INPUT_TOKENS else None)
    expected = _logits(model, batch)
    regression = auto_class == "AutoModelForSequenceClassification" and model.config.num_labels == 1
    task = None if regression else PIPELINES.get(auto_class)
    texts = (pipeline_inputs(task, tokenizer) if texts is None else texts) if task else []
    if task and not (Path(folder) / "tokenizer_config.json").is_file():
        raise UserError(f"{folder} has no tokenizer (tokenizer_config.json), which the {task} pipeline loads from "
                        "the folder; save the tokenizer there (make export does).")
    with tempfile.TemporaryDirectory(prefix="mosaicbert-parity-") as work:
        inputs, outputs = os.path.join(work, "inputs.safetensors"), os.path.join(work, "outputs.safetensors")
        save_file({key: value.contiguous() for key, value in batch.items()}, inputs)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": os.path.join(work, "modules")}
        command = [sys.executable, "-I", str(ISOLATED_LOAD), str(Path(folder).resolve()), auto_class, inputs, outputs]
        done = subprocess.run(command + ([task, json.dumps(texts)] if task else []), capture_output=True,
                              text=True, cwd=work, env=env)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            raise UserError(f"{folder} does not load with plain transformers (trust_remote_code=True) in a process "
                            f"without this package:\n{tail}")
        try:
            loaded = json.loads(done.stdout.strip().splitlines()[-1])
            actual = load_file(outputs)["logits"]
        except (IndexError, json.JSONDecodeError, OSError, KeyError) as err:
            raise UserError(f"the isolated load of {folder} gave no readable report ({err.__class__.__name__}); "
                            f"its output ended with: {done.stdout.strip()[-300:]!r}") from None
    if loaded["mosaicbert_imported"]:
        raise UserError(f"loading {folder} imported the mosaicbert package; the exported code must not need it.")
    rows = batch["attention_mask"].bool() if per_token else torch.ones(expected.shape[0], dtype=torch.bool)
    if actual.shape != expected.shape:
        raise UserError(f"{folder} gives logits of shape {tuple(actual.shape)}, the source model {tuple(expected.shape)}.")
    report = ParityReport(auto_class, loaded["class"], loaded["module"], int(rows.sum()),
                          float((actual[rows] - expected[rows]).abs().max()), batch["input_ids"].shape[1])
    if not torch.allclose(actual[rows], expected[rows], atol=atol, rtol=rtol):
        raise UserError(f"{folder} computes other logits than the source model: {report.describe()}.")
    if task is None:
        return report
    for text, output in zip(texts, loaded["pipeline"]):
        wanted = source_output(model, tokenizer, task, text)
        if output != wanted:
            raise UserError(f"{folder}: the {task} pipeline in the other process answers {output!r} for {text!r}; "
                            f"the source model here gives {wanted!r}.")
    report.pipeline, report.pipeline_outputs = task, loaded["pipeline"]
    return report
