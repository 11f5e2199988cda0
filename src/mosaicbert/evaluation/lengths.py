"""Masked-language-model loss and accuracy at several sequence lengths: how far a model extrapolates.

Every model is scored on the same token pieces with the same masks. The pieces come from one token
stream, the evaluation split's documents in order, each closed by [SEP]: a piece of length L is L - 2
tokens of that stream between [CLS] and [SEP], so a piece is as long as asked even where documents are
short, and every length is scored on the same number of tokens. Masks are drawn once per piece from a
seeded generator (BERT's 80/10/10 rule), whatever the model.

A model with a learned position table (Hugging Face BERT) has no position past its
`max_position_embeddings`: those lengths are reported as not applicable, never run on a truncated or
stretched table. MosaicBERT's ALiBi has no limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mosaicbert.data.mlm import IGNORE_INDEX, MLMCollator
from mosaicbert.errors import UserError
from mosaicbert.export.writer import TrainedModel, read_trained_model, source_tokenizer

MASK_SEED = 1234  # the masks' generator: piece i of every length uses MASK_SEED + i


@dataclass
class LengthScore:
    length: int
    cross_entropy: float | None  # mean over masked tokens; None where the model cannot take the length
    standard_error: float | None  # of that mean, over the masked tokens
    accuracy: float | None
    masked_tokens: int
    note: str = ""


@dataclass
class ModelScores:
    name: str
    path: str
    model_name: str
    trained_at: int
    position_limit: int | None  # None: no position table (ALiBi)
    scores: list[LengthScore]


def resolve_checkpoint(path: Path) -> Path:
    """A run folder means its latest checkpoint; anything else is read as given."""
    latest = path / "checkpoints" / "latest-rank0.pt"
    return latest if path.is_dir() and not (path / "config.json").is_file() and latest.exists() else path


def position_limit(model: torch.nn.Module) -> int | None:
    """The longest input a model's position table covers; None when it has no table."""
    if getattr(model.config, "model_type", "") == "bert":
        return model.config.max_position_embeddings
    return None


def token_stream(texts: Iterable[str], tokenizer, needed: int) -> list[int]:
    """The documents' tokens in order, each document closed by [SEP], until `needed` tokens are there."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.sep_token_id]
        if len(stream) >= needed:
            return stream
    raise UserError(f"the evaluation documents hold {len(stream):,} tokens, fewer than the {needed:,} needed; "
                    "lower --tokens-per-length or evaluate on a larger split (--split).")


def masked_pieces(stream: list[int], length: int, count: int, tokenizer, mlm_probability: float) -> dict[str, torch.Tensor]:
    """`count` pieces of `length` tokens ([CLS], L - 2 stream tokens, [SEP]) from the stream's start, masked."""
    body = length - 2
    rows = [[tokenizer.cls_token_id, *stream[i * body:(i + 1) * body], tokenizer.sep_token_id] for i in range(count)]
    input_ids = torch.tensor(rows)
    attention_mask = torch.ones_like(input_ids)
    collator = MLMCollator.for_tokenizer(tokenizer, mlm_probability)
    generators = [torch.Generator().manual_seed(MASK_SEED + i) for i in range(count)]
    masked, labels = collator.mask(input_ids, attention_mask, generators)
    return {"input_ids": masked, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids),
            "labels": labels}


@torch.no_grad()
def score_pieces(model: torch.nn.Module, pieces: dict[str, torch.Tensor],
                 tokens_per_batch: int) -> tuple[float, float, float, int]:
    """(mean cross-entropy, its standard error, accuracy, count) over the masked tokens, in batches of about
    `tokens_per_batch` tokens."""
    rows = max(1, tokens_per_batch // pieces["input_ids"].shape[1])
    losses, correct = [], 0
    for start in range(0, pieces["input_ids"].shape[0], rows):
        batch = {key: value[start:start + rows] for key, value in pieces.items()}
        output = model(**batch)
        # MosaicBERT returns the masked tokens' logits with their labels; BERT returns every position's.
        labels = getattr(output, "labels", None)
        logits = output.logits
        if labels is None:
            selected = batch["labels"] != IGNORE_INDEX
            logits, labels = logits[selected], batch["labels"][selected]
        losses.append(torch.nn.functional.cross_entropy(logits.double(), labels, reduction="none"))
        correct += int((logits.argmax(-1) == labels).sum())
    token_losses = torch.cat(losses)
    count = token_losses.numel()
    return float(token_losses.mean()), float(token_losses.std() / count**0.5), correct / count, count


def evaluate_lengths(paths: Sequence[str], lengths: Sequence[int], texts_for: Callable[[TrainedModel], Iterable[str]],
                     tokens_per_length: int = 16_384, mlm_probability: float = 0.15, tokens_per_batch: int = 4096,
                     tokenizer_name: str | None = None, progress: Callable[[str], None] = print) -> list[ModelScores]:
    """Each model of `paths` scored at each length on the same pieces and masks. `texts_for(source)` gives the
    evaluation documents (the first model's decide; all models must share its tokenizer)."""
    if not paths:
        raise UserError("name at least one checkpoint, run folder or model folder.")
    if not lengths or any(length < 8 for length in lengths):
        raise UserError(f"--lengths must be sequence lengths of at least 8 tokens, got {list(lengths)}.")
    results, shared = [], None
    for path in paths:
        where = resolve_checkpoint(Path(path))
        source = read_trained_model(where)
        name, tokenizer = source_tokenizer(source, tokenizer_name, where)
        if shared is None:
            needed = max(tokens_per_length // length * (length - 2) + length for length in lengths)
            shared = (name, tokenizer, token_stream(texts_for(source), tokenizer, needed))
        elif tokenizer.get_vocab() != shared[1].get_vocab():
            raise UserError(f"{path} uses tokenizer {name}, not {shared[0]} as {paths[0]} does; models are compared "
                            "on the same tokens and masks, so they must share a tokenizer.")
        model = source.model.eval()
        limit = position_limit(model)
        scores = []
        for length in lengths:
            if limit is not None and length > limit:
                scores.append(LengthScore(length, None, None, None, 0, f"position table ends at {limit}"))
                continue
            pieces = masked_pieces(shared[2], length, max(1, tokens_per_length // length), shared[1], mlm_probability)
            loss, error, accuracy, count = score_pieces(model, pieces, tokens_per_batch)
            progress(f"{path} at {length}: cross-entropy {loss:.4f} ± {error:.4f}, accuracy {accuracy:.4f} "
                     f"({count:,} masked tokens)")
            scores.append(LengthScore(length, loss, error, accuracy, count))
        results.append(ModelScores(Path(path).name if Path(path).is_dir() else path, str(path), source.model_name,
                                   source.max_seq_len, limit, scores))
    return results


def markdown_table(results: Sequence[ModelScores]) -> str:
    lengths = [score.length for score in results[0].scores]
    lines = ["| model | trained at | " + " | ".join(f"{length}" for length in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for result in results:
        cells = [f"{s.cross_entropy:.3f} ± {s.standard_error:.3f} ({s.accuracy:.1%})" if s.cross_entropy is not None
                 else f"n/a ({s.note})" for s in result.scores]
        lines.append(f"| {result.name} ({result.model_name}) | {result.trained_at} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nEach cell: MLM cross-entropy on the masked tokens ± its standard error "
            "(accuracy).\n")


def plot(results: Sequence[ModelScores], out: Path) -> None:
    """Cross-entropy against evaluation length, one line per model (log-scaled lengths)."""
    from matplotlib.figure import Figure  # only drawing needs matplotlib

    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    for result in results:
        points = [(s.length, s.cross_entropy, s.standard_error) for s in result.scores if s.cross_entropy is not None]
        lengths, losses, errors = zip(*points)
        line = axes.errorbar(lengths, losses, yerr=errors, marker="o", capsize=3,
                             label=f"{result.name} (trained at {result.trained_at})")[0]
        axes.axvline(result.trained_at, color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("evaluation length (tokens)")
    axes.set_ylabel("MLM cross-entropy (masked tokens)")
    axes.set_title("Length extrapolation (dotted: training length; bars: standard error)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def write_results(results: Sequence[ModelScores], out_dir: Path, settings: dict[str, Any]) -> list[Path]:
    """results.json, table.md and lengths.png in `out_dir`, each written whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, write in (("results.json", lambda p: p.write_text(json.dumps(
                            {"settings": settings, "models": [asdict(r) for r in results]}, indent=2) + "\n")),
                        ("table.md", lambda p: p.write_text(markdown_table(results))),
                        ("lengths.png", lambda p: plot(results, p))):
        final = out_dir / name
        partial = final.with_name(f".{name}.partial{final.suffix}")
        write(partial)
        partial.replace(final)
        written.append(final)
    return written
