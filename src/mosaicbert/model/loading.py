"""Starting points for fine-tuning: a Composer pretraining checkpoint or a Hugging Face model folder.

A Composer checkpoint (`*.pt`) carries weights only; the architecture comes from the
`model_config.json` that pretraining writes next to its checkpoints (or from a config
mapping given explicitly). A Hugging Face folder carries both (`config.json` plus
`model.safetensors` or `pytorch_model.bin`), in any of the usual layouts: saved from the bare
encoder (`BertModel`, parameter names without `bert.`), from an MLM model or from a classifier.
Weights go in through transformers' `from_pretrained`, which maps those layouts. The classifier
is always freshly initialised; the pooler too when the start is an MLM checkpoint, which has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

from mosaicbert.errors import UserError
from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
from mosaicbert.model.modeling_mosaicbert import MosaicBertForMaskedLM, MosaicBertForSequenceClassification

MODEL_TYPES = {"mosaic_bert": "mosaic_bert", "hf_bert": "bert"}  # our registry name -> transformers model_type
CLASSIFIERS = {"mosaic_bert": (MosaicBertConfig, MosaicBertForSequenceClassification),
               "hf_bert": (BertConfig, BertForSequenceClassification)}
# A weight only one of the two architectures has, to tell them apart from the state dict alone.
SIGNATURE_KEYS = {"mosaic_bert": "bert.encoder.layer.0.attention.Wqkv.weight",
                  "hf_bert": "bert.encoder.layer.0.attention.self.query.weight"}


def folder_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json; a Hugging Face model folder (save_pretrained) is expected.")
    return json.loads(config_file.read_text())


def read_start(path: str, model_config: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict without wrapper prefixes) of a starting point."""
    start = Path(path)
    if start.is_dir():
        config = folder_config(start)
        if (start / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(start / "model.safetensors"))
        elif (start / "pytorch_model.bin").is_file():
            state = torch.load(start / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise UserError(f"{start} has no model.safetensors or pytorch_model.bin.")
        return config, state
    if not start.is_file():
        raise UserError(f"starting checkpoint {start} does not exist; point starting_checkpoint at a pretraining "
                        "checkpoint (runs/<run>/checkpoints/latest-rank0.pt) or a Hugging Face model folder.")
    checkpoint = torch.load(start, map_location="cpu", weights_only=False)  # Composer pickles its state: trusted files only
    try:
        weights = checkpoint["state"]["model"]
    except (KeyError, TypeError):
        raise UserError(f"{start} is not a Composer checkpoint (no state/model entry).") from None
    state = {key.removeprefix("module.").removeprefix("model."): value for key, value in weights.items()}
    shape = state.pop("_extra_state", None)  # widths of a structurally pruned model (ComposerMosaicBert)
    if model_config is None:
        config_file = start.parent / "model_config.json"
        if not config_file.is_file():
            raise UserError(f"no model_config.json next to {start}; pretraining writes one beside its checkpoints, "
                            "or give the architecture as model_config in the GLUE YAML.")
        model_config = json.loads(config_file.read_text())
    model_config = dict(model_config)
    if isinstance(shape, dict):
        model_config.update(shape)
    return model_config, state


def fold_search_coefficients(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint taken during an EarlyBERT search still holds head and unit coefficients: scale the
    following projections by them (as the search did) so the encoder computes the same function."""
    state = dict(state)
    for key in [k for k in state if k.endswith((".attention.head_coef", ".mlp.unit_coef"))]:
        coef = state.pop(key)
        prefix = key.rsplit(".", 1)[0]
        target = f"{prefix}.dense.weight" if key.endswith("head_coef") else f"{prefix}.wo.weight"
        weight = state[target]
        scale = coef.repeat_interleave(weight.shape[1] // coef.numel()).to(weight.dtype)
        state[target] = weight * scale[None, :]
    return state


def folder_model_name(folder: Path) -> str:
    """Which of `CLASSIFIERS` a Hugging Face model folder holds, by the `model_type` of its config.json."""
    model_type = folder_config(folder).get("model_type")
    found = next((name for name, known in MODEL_TYPES.items() if known == model_type), None)
    if found is None:
        raise UserError(f"{folder} holds a model of type {model_type!r} (config.json model_type); GLUE fine-tunes "
                        "BERT (model_type bert, model_name=hf_bert) or MosaicBERT (mosaic_bert) encoders.")
    return found


def check_model_name(path: str, found: str, model_name: str) -> None:
    if found != model_name:
        raise UserError(f"{path} holds a {found} model, but the GLUE config says model_name={model_name}; "
                        f"set model_name={found} or use a {model_name} checkpoint.")


def load_classifier(path: str, model_name: str, num_labels: int, model_config: dict[str, Any] | None = None) -> torch.nn.Module:
    """A sequence classifier of type `model_name` with the encoder weights of `path` and a fresh classifier."""
    if model_name not in CLASSIFIERS:
        raise UserError(f"model_name must be one of {', '.join(CLASSIFIERS)}, got '{model_name}'.")
    config_cls, model_cls = CLASSIFIERS[model_name]
    folder = Path(path).is_dir()
    if folder:
        check_model_name(path, folder_model_name(Path(path)), model_name)
    if folder and model_name == "hf_bert":
        source, state = path, None  # transformers reads the folder itself
        config = config_cls.from_pretrained(path)
    else:
        # Composer checkpoints and MosaicBERT folders are read here, to fold EarlyBERT search coefficients in first.
        config_dict, state = read_start(path, model_config)
        state = fold_search_coefficients(state)
        if not folder:  # a folder's config.json has said what it holds
            found = next((name for name, key in SIGNATURE_KEYS.items() if key in state), None)
            if found is None:
                raise UserError(f"{path} holds neither a MosaicBERT nor a Hugging Face BERT encoder.")
            check_model_name(path, found, model_name)
        source, config = None, config_cls.from_dict(config_dict)
    config.num_labels = num_labels  # also resets id2label to this width
    # Chosen again from num_labels at the first loss; a start fine-tuned on MNLI says single_label_classification.
    config.problem_type = None
    try:
        # ignore_mismatched_sizes: a start fine-tuned on MNLI has a 3-way classifier; its width is checked below.
        model, info = model_cls.from_pretrained(source, config=config, state_dict=state, ignore_mismatched_sizes=True,
                                                output_loading_info=True)
    except OSError as err:  # e.g. a folder without weights
        raise UserError(f"could not load {path}: {err}") from None
    mismatched = [key if isinstance(key, str) else key[0] for key in info["mismatched_keys"]]  # (key, shapes) before 4.46
    fresh = [k for k in info["missing_keys"] if not k.startswith(("classifier.", "bert.pooler."))]
    fresh += [k for k in mismatched if not k.startswith("classifier.")]
    if fresh:
        raise UserError(f"{path} lacks encoder weights the classifier needs (e.g. {fresh[0]}); is it the right architecture?")
    # Every task starts with a new classifier, round 2 from the MNLI model too, even where the widths match.
    model._init_weights(model.classifier)
    return model


def export_pretrained(checkpoint: str, out_dir: str) -> torch.nn.Module:
    """Write a Composer MosaicBERT pretraining checkpoint (pruned or not) as a Hugging Face model folder."""
    config_dict, state = read_start(checkpoint)
    if SIGNATURE_KEYS["mosaic_bert"] not in state:
        raise UserError(f"{checkpoint} does not hold a MosaicBERT model (hf_bert runs can use Composer's "
                        "write_huggingface_pretrained_from_composer_checkpoint).")
    model = MosaicBertForMaskedLM(MosaicBertConfig.from_dict(config_dict))
    missing, unexpected = model.load_state_dict(fold_search_coefficients(state), strict=False)
    if missing or unexpected:
        raise UserError(f"{checkpoint} does not match its architecture: missing {missing[:3]}, unexpected {unexpected[:3]}.")
    model.save_pretrained(out_dir)
    return model
