"""Does an exported folder compute what the model it came from computes, for someone without this package?

The folder is loaded in a second Python process (`isolated_load.py`, run with `python -I` and unable to
import `mosaicbert`) through transformers' Auto classes with `trust_remote_code=True`. Its logits on a
padded batch of sentences of different lengths are compared with the source model's, here, in fp32; for
masked LM the fill-mask pipeline's top prediction too.
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
MASK_EVERY = 4  # every 4th real, non-special token becomes [MASK] in the masked-LM batch


@dataclass
class ParityReport:
    auto_class: str
    loaded_class: str
    loaded_module: str
    positions: int  # logit rows compared
    max_abs_diff: float
    fill_mask_top: int | None = None  # token id the pipeline ranked first in the other process
    expected_top: int | None = None  # and the source model here

    def describe(self) -> str:
        text = (f"{self.auto_class} -> {self.loaded_module}.{self.loaded_class}: {self.positions} logit rows, "
                f"max |difference| {self.max_abs_diff:.2e}")
        if self.fill_mask_top is not None:
            text += f"; fill-mask top token {self.fill_mask_top} (source model: {self.expected_top})"
        return text


def sample_batch(tokenizer, masked_lm: bool) -> dict[str, torch.Tensor]:
    """A padded batch of `SAMPLE_TEXTS` (one a sentence pair), with every `MASK_EVERY`-th token masked for MLM."""
    singles = [t for t in SAMPLE_TEXTS if isinstance(t, str)]
    pairs = [t for t in SAMPLE_TEXTS if not isinstance(t, str)]
    encoded = [tokenizer(text) for text in singles] + [tokenizer(a, b) for a, b in pairs]
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


def check_parity(model: torch.nn.Module, tokenizer, folder: str | Path, auto_class: str,
                 atol: float = 1e-5, rtol: float = 1e-4) -> ParityReport:
    """Compare `model` (in eval mode) with `folder` loaded through `transformers.<auto_class>` in a separate
    process; a UserError says what differs or why the folder does not load."""
    masked_lm = auto_class == "AutoModelForMaskedLM"
    model = model.eval()
    batch = sample_batch(tokenizer, masked_lm)
    expected = _logits(model, batch)
    fill_mask_text = FILL_MASK_TEMPLATE.format(mask=tokenizer.mask_token) if masked_lm else None
    with tempfile.TemporaryDirectory(prefix="mosaicbert-parity-") as work:
        inputs, outputs = os.path.join(work, "inputs.safetensors"), os.path.join(work, "outputs.safetensors")
        save_file({key: value.contiguous() for key, value in batch.items()}, inputs)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": os.path.join(work, "modules")}
        command = [sys.executable, "-I", str(ISOLATED_LOAD), str(Path(folder).resolve()), auto_class, inputs, outputs]
        done = subprocess.run(command + ([fill_mask_text] if fill_mask_text else []), capture_output=True,
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
    rows = batch["attention_mask"].bool() if masked_lm else torch.ones(expected.shape[0], dtype=torch.bool)
    if actual.shape != expected.shape:
        raise UserError(f"{folder} gives logits of shape {tuple(actual.shape)}, the source model {tuple(expected.shape)}.")
    report = ParityReport(auto_class, loaded["class"], loaded["module"], int(rows.sum()),
                          float((actual[rows] - expected[rows]).abs().max()))
    if not torch.allclose(actual[rows], expected[rows], atol=atol, rtol=rtol):
        raise UserError(f"{folder} computes other logits than the source model: {report.describe()}.")
    if masked_lm:
        encoded = tokenizer(fill_mask_text, return_tensors="pt")
        position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
        report.expected_top = int(_logits(model, dict(encoded))[0, position].argmax())
        report.fill_mask_top = loaded["fill_mask_top"]
        if report.fill_mask_top != report.expected_top:
            raise UserError(f"{folder}: the fill-mask pipeline's top prediction differs from the source model's: "
                            f"{report.describe()}.")
    return report
