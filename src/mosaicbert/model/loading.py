"""Starting points for training and fine-tuning: a Composer pretraining checkpoint or a Hugging Face model folder.

A Composer checkpoint (`*.pt`) carries weights only; the architecture comes from the
`model_config.json` that pretraining writes next to its checkpoints (or from a config
mapping given explicitly). A Hugging Face folder carries both (`config.json` plus
`model.safetensors` or `pytorch_model.bin`), in any of the usual layouts: saved from the bare
encoder (`BertModel`, parameter names without `bert.`), from an MLM model or from a classifier;
this package's MosaicBERT, transformers' BERT, or the original MosaicBERT release
(`mosaicml/mosaic-bert-base`, read through `original_layout.py`).
Weights go in through transformers' `from_pretrained`, which maps those layouts. The classifier
is always freshly initialised; the pooler too when the start is an MLM checkpoint, which has none.

The API: `resolve_source` (a hub id to a local folder), `read_source` (what a start holds: its model, architecture
and weights), `load_pretrained` (a model of a given head with a start's weights) and its three uses,
`load_classifier`, `load_masked_lm` and `load_weights_into`; `source_position_table` for a check that reads no
weights; and the checks of a model config against its class and tokenizer.

Safety: folders are read with safetensors where they have it. A `pytorch_model.bin` (the original release ships
only that) is a pickle, read with `torch.load(weights_only=True)`: torch's restricted unpickler, which rebuilds
tensors and plain containers and refuses any other object. Only Composer checkpoints are unpickled in full
(Composer stores its training state that way): open only checkpoints you or someone you trust wrote. No remote
code runs: a folder's `modeling_*.py` is never imported here.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification

from mosaicbert.data.tokenizer import padded_vocab_size
from mosaicbert.errors import ConfigError, UserError, nearest
from mosaicbert.model import original_layout
from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
from mosaicbert.model.modeling_mosaicbert import (MosaicBertForMaskedLM, MosaicBertForSequenceClassification,
                                                  MosaicBertForTokenClassification)
from mosaicbert.model.pruning import FOLDED_INTO, column_scale

log = logging.getLogger(__name__)
MODEL_TYPES = {"mosaic_bert": "mosaic_bert", "hf_bert": "bert"}  # our registry name -> transformers model_type
CLASSIFIERS = {"mosaic_bert": (MosaicBertConfig, MosaicBertForSequenceClassification),
               "hf_bert": (BertConfig, BertForSequenceClassification)}
TOKEN_CLASSIFIERS = {"mosaic_bert": (MosaicBertConfig, MosaicBertForTokenClassification),
                     "hf_bert": (BertConfig, BertForTokenClassification)}
MASKED_LMS = {"mosaic_bert": (MosaicBertConfig, MosaicBertForMaskedLM), "hf_bert": (BertConfig, BertForMaskedLM)}
# A weight only one of the two architectures has, to tell them apart from the state dict alone.
SIGNATURE_KEYS = {"mosaic_bert": "bert.encoder.layer.0.attention.Wqkv.weight",
                  "hf_bert": "bert.encoder.layer.0.attention.self.query.weight"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# At most this many rows of a pretrained vocabulary past its tokenizer's tokens are alignment padding (rounding up to
# a multiple of 64, as MosaicBERT's 30522 -> 30528, adds fewer); a larger model.vocab_multiple raises it.
VOCAB_PADDING = 64


def _folder_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json; a Hugging Face model folder (save_pretrained) is expected.")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{config_file} is not valid JSON ({err}); re-export or re-download the folder.") from None


def _folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors, read without unpickling anything but tensors."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if (folder / "model.safetensors.index.json").is_file():
        raise UserError(f"{folder} holds sharded weights (model.safetensors.index.json); BERT-size encoders are "
                        "saved in one file: save it again with save_pretrained(..., max_shard_size='10GB').")
    raise UserError(f"{folder} has no {' or '.join(WEIGHT_FILES)}; the folder is incomplete (copy or export it again).")


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of a MosaicBERT or BERT folder, the original MosaicBERT layout converted."""
    config, state = _folder_config(folder), _folder_weights(folder)
    if original_layout.is_original_config(config) or original_layout.is_original_state(state):
        state = original_layout.convert_state(state)
        config = original_layout.convert_config(config, state)
    return config, state


def resolve_source(name_or_path: str) -> str:
    """A local checkpoint or folder as is; a hub id (`org/name`) downloaded to the hub cache: config.json
    and the weights only, never the repository's code."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or name_or_path.endswith(".pt"):
        raise UserError(f"{name_or_path} does not exist; point at a Hugging Face model folder, a Composer "
                        "checkpoint, or a hub id such as mosaicml/mosaic-bert-base.")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name_or_path, allow_patterns=["config.json", "model.safetensors"])
        if not (Path(folder) / "model.safetensors").is_file():  # older repositories (the original release) have a .bin only
            folder = snapshot_download(name_or_path, allow_patterns=["config.json", "pytorch_model.bin"])
        return folder
    except Exception as err:  # huggingface_hub's errors for unknown repos, no network, gated access
        raise UserError(f"could not download {name_or_path} from the Hugging Face hub ({err.__class__.__name__}); "
                        "check the id, or download the folder once with network access and point at it.") from None


def check_config_keys(model_config: dict[str, Any], config_class: type) -> None:
    """model.model_config's keys must be fields of `config_class` (the nearest valid one is suggested)."""
    valid = set(config_class().to_dict())
    unknown = sorted(set(model_config) - valid)
    if unknown:
        raise ConfigError(f"model.model_config: {config_class.__name__} has no field '{unknown[0]}'."
                          f"{nearest(unknown[0], valid)}")


def with_vocab_size(model_config: dict[str, Any], tokenizer: Any, vocab_multiple: int) -> dict[str, Any]:
    """A fresh model's config: vocab_size by default the tokenizer's size rounded up to `vocab_multiple`
    (30522 -> 30528 at 64), and never below the tokenizer's."""
    config = {"vocab_size": padded_vocab_size(len(tokenizer), vocab_multiple), **model_config}
    check_vocabulary(config["vocab_size"], tokenizer)
    return config


def check_vocabulary(vocab_size: int, tokenizer: Any, pretrained_model_name: str | None = None,
                     vocab_multiple: int = 1) -> None:
    """The model's vocabulary against the tokenizer's, one message for every model and start. Every token id needs
    a row (a larger id fails in the embedding lookup, mid-run). A pretrained model's rows past the tokenizer's may
    be alignment padding only: more, and the tokenizer is not the one the model learnt, its ids naming other rows."""
    tokens = len(tokenizer)
    tokenizer_name = f"tokenizer_name={tokenizer.name_or_path}"
    if pretrained_model_name is None:
        if vocab_size < tokens:
            raise UserError(f"model.model_config.vocab_size={vocab_size} is smaller than the tokenizer's {tokens} "
                            f"tokens ({tokenizer_name}); remove it (the default is the tokenizer's size rounded up to "
                            f"model.vocab_multiple) or set it to at least {tokens}.")
        return
    padding = max(vocab_multiple, VOCAB_PADDING)
    if 0 <= vocab_size - tokens <= padding:
        return
    fix = (f"set tokenizer_name to the tokenizer {pretrained_model_name} was trained with (the folder itself where it "
           "holds one, as exports do; bert-base-uncased for the mosaicml/mosaic-bert-base release).")
    if vocab_size < tokens:
        raise UserError(f"model.pretrained_model_name={pretrained_model_name} has a vocabulary of {vocab_size} tokens, "
                        f"smaller than the tokenizer's {tokens} tokens ({tokenizer_name}): ids from {vocab_size} up "
                        f"would have no embedding; {fix}")
    raise UserError(f"model.pretrained_model_name={pretrained_model_name} has a vocabulary of {vocab_size} tokens but "
                    f"the tokenizer has {tokens} tokens ({tokenizer_name}), more rows than alignment padding (at most "
                    f"{padding}) explains: it is another tokenizer, whose ids would name other tokens' rows; {fix}")


@dataclass
class Pretrained:
    """A starting point, read: which model it holds, its architecture and its weights."""

    path: str
    model_name: str  # "mosaic_bert" or "hf_bert"
    config: dict[str, Any]  # a folder's config.json, a checkpoint's model_config.json (or the one given)
    state: dict[str, torch.Tensor] | None  # wrapper prefixes removed; None for a BERT folder, which transformers reads
    checkpoint: dict[str, Any] | None = None  # a Composer checkpoint whole (its timestamp and metadata)
    architectures: tuple[str, ...] = ()  # the classes a folder's config.json names as saved (its head)


def read_source(path: str, architecture: dict[str, Any] | None = None) -> Pretrained:
    """A local Composer checkpoint or Hugging Face folder. A checkpoint's architecture is `architecture` when
    given, else the model_config.json that pretraining writes beside its checkpoints."""
    start = Path(path)
    if start.is_dir():
        model_name, saved = folder_model_name(start), _folder_config(start)
        architectures = tuple(saved.get("architectures") or ())  # the original layout's conversion drops them
        if model_name == "hf_bert":  # transformers reads its own BERT folders, in each of their layouts
            return Pretrained(path, model_name, saved, None, architectures=architectures)
        return Pretrained(path, model_name, *_read_folder(start), architectures=architectures)
    checkpoint = _read_composer_checkpoint(start)
    config, state = _checkpoint_contents(checkpoint, start, architecture)
    return Pretrained(path, _model_name_of_weights(path, state), config, state, checkpoint)


def _read_composer_checkpoint(path: Path) -> dict[str, Any]:
    """A Composer checkpoint, whole. Composer pickles its state: trusted files only (see the module docstring)."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; point at a pretraining checkpoint "
                        "(runs/<run>/checkpoints/latest-rank0.pt) or a Hugging Face model folder.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{path} cannot be read as a checkpoint ({err.__class__.__name__}: "
                        f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}); it is damaged, "
                        "cut short or not a Composer checkpoint.") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state"), dict) or "model" not in checkpoint["state"]:
        raise UserError(f"{path} is not a Composer checkpoint (no state/model entry).")
    return checkpoint


def _checkpoint_contents(checkpoint: dict[str, Any], path: Path,
                         architecture: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict without wrapper prefixes) of a Composer checkpoint read from `path`."""
    weights = checkpoint["state"]["model"]
    state = {key.removeprefix("module.").removeprefix("model."): value for key, value in weights.items()}
    shape = state.pop("_extra_state", None)  # widths of a structurally pruned model (ComposerMosaicBert)
    if architecture is None:
        config_file = path.parent / "model_config.json"
        if not config_file.is_file():
            raise UserError(f"no model_config.json next to {path}; pretraining writes one beside its checkpoints, "
                            "or give the architecture as model_config in the GLUE YAML.")
        try:
            architecture = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{config_file} is not valid JSON ({err}); pretraining rewrites it on its next start, "
                            "or give the architecture as model_config.") from None
    architecture = dict(architecture)
    if isinstance(shape, dict):
        architecture.update(shape)
    return architecture, state


def _fold_search_coefficients(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint taken during an EarlyBERT search still holds head and unit coefficients: scale the
    following projections by them (as the search did) so the encoder computes the same function."""
    state = dict(state)
    for key in [k for k in state if k.rsplit(".", 1)[-1] in FOLDED_INTO]:
        coef = state.pop(key)
        prefix, name = key.rsplit(".", 1)
        target = f"{prefix}.{FOLDED_INTO[name]}.weight"
        weight = state[target]
        state[target] = weight * column_scale(coef, weight.shape[1]).to(weight.dtype)[None, :]
    return state


def source_position_table(path: str, architecture: dict[str, Any] | None = None) -> int:
    """The learned position table's size of a BERT start (a folder's config.json; for a checkpoint `architecture`,
    else the model_config.json beside it, as the loader reads them), without reading its weights."""
    start = Path(path)
    if start.is_dir():
        architecture = _folder_config(start)
    elif architecture is None:
        config_file = start.parent / "model_config.json"
        try:
            architecture = json.loads(config_file.read_text()) if config_file.is_file() else {}
        except json.JSONDecodeError:
            architecture = {}  # the job that reads it says what is wrong with it
    return int(architecture.get("max_position_embeddings", BertConfig().max_position_embeddings))


def folder_model_name(folder: Path) -> str:
    """Which of `CLASSIFIERS` a Hugging Face model folder holds, by its config.json (`model_type`; the
    original MosaicBERT release says "bert" too, and is told apart by its markers)."""
    config = _folder_config(folder)
    model_type = config.get("model_type")
    if original_layout.is_original_config(config):
        return "mosaic_bert"
    found = next((name for name, known in MODEL_TYPES.items() if known == model_type), None)
    if found is None:
        raise UserError(f"{folder} holds a model of type {model_type!r} (config.json model_type); this package "
                        "trains BERT (model_type bert, model name hf_bert) and MosaicBERT (model_type mosaic_bert, "
                        "or the original mosaicml/mosaic-bert-base layout) encoders.")
    return found


def check_model_name(path: str, found: str, model_name: str, setting: str = "the GLUE config says model_name") -> None:
    if found != model_name:
        raise UserError(f"{path} holds a {found} model, but {setting}={model_name}; "
                        f"set it to {found} or use a {model_name} checkpoint.")


def _model_name_of_weights(path: str, state: dict[str, torch.Tensor]) -> str:
    """`mosaic_bert` or `hf_bert`, for a Composer checkpoint, which says it by its weights alone."""
    found = next((name for name, key in SIGNATURE_KEYS.items() if key in state), None)
    if found is None:
        raise UserError(f"{path} holds neither a MosaicBERT nor a Hugging Face BERT encoder.")
    return found


def _head(heads: dict[str, tuple[type, type]], model_name: str, setting: str) -> tuple[type, type]:
    if model_name not in heads:
        raise UserError(f"unknown model '{model_name}' ({setting}); use one of {', '.join(heads)}.")
    return heads[model_name]


def load_pretrained(source: Pretrained, model_name: str, heads: dict[str, tuple[type, type]], setting: str,
                    config: Any = None, **config_updates: Any):
    """(model, loading info): `heads[model_name]`'s model with `source`'s weights, EarlyBERT search coefficients
    folded in first. Its architecture is `config` when given, else the source's, with `config_updates`.
    Weights the source lacks, or has in other shapes, are freshly initialised and listed in the info; the
    caller decides which may be. `setting` names where `model_name` came from, for the message on a mismatch."""
    config_cls, model_cls = _head(heads, model_name, setting)
    check_model_name(source.path, source.model_name, model_name, setting)
    if config is None:
        config = config_cls.from_pretrained(source.path) if source.state is None else config_cls.from_dict(source.config)
    for key, value in config_updates.items():
        setattr(config, key, value)  # after construction: num_labels then also resets a start's id2label
    weights = ({"pretrained_model_name_or_path": source.path} if source.state is None else
               {"pretrained_model_name_or_path": None, "state_dict": _fold_search_coefficients(source.state)})
    try:
        return model_cls.from_pretrained(**weights, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
    except OSError as err:  # e.g. a folder without weights
        raise UserError(f"could not load {source.path}: {err}") from None


def _load_path(path: str, model_name: str, heads: dict[str, tuple[type, type]], setting: str,
               architecture: dict[str, Any] | None = None, **options: Any):
    """load_pretrained(read_source(path, architecture), ...), with what needs no weights checked before they are
    read: a known model name, and the one a folder's config.json names."""
    _head(heads, model_name, setting)
    if Path(path).is_dir():
        check_model_name(path, folder_model_name(Path(path)), model_name, setting)
    return load_pretrained(read_source(path, architecture), model_name, heads, setting, **options)


def loading_key_names(entries: list) -> list[str]:
    return [key if isinstance(key, str) else key[0] for key in entries]  # mismatched: (key, shapes) before 4.46


def load_classifier(path: str, model_name: str, num_labels: int, model_config: dict[str, Any] | None = None,
                    label_names: tuple[str, ...] = (), per_token: bool = False, multilabel: bool = False) -> torch.nn.Module:
    """A sequence classifier (a token classifier with `per_token`) of type `model_name` with the encoder weights
    of `path` and a fresh classifier. `label_names` go into its config (id2label, label2id), so a saved and
    exported model names its predictions, in pipelines too."""
    # num_labels also resets id2label to this width. problem_type is chosen again from num_labels at the
    # first loss (a start fine-tuned on MNLI says single_label_classification) unless multilabel fixes it.
    # ignore_mismatched_sizes (load_pretrained): a start fine-tuned on MNLI has a 3-way classifier; its width
    # is checked below.
    model, info = _load_path(path, model_name, TOKEN_CLASSIFIERS if per_token else CLASSIFIERS,
                             "the GLUE config says model_name", model_config, num_labels=num_labels,
                             problem_type="multi_label_classification" if multilabel else None)
    fresh = [k for k in info["missing_keys"] if not k.startswith(("classifier.", "bert.pooler."))]
    fresh += [k for k in loading_key_names(info["mismatched_keys"]) if not k.startswith("classifier.")]
    if fresh:
        raise UserError(f"{path} lacks encoder weights the classifier needs (e.g. {fresh[0]}); is it the right architecture?")
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    # Every task starts with a new classifier, round 2 from the MNLI model too, even where the widths match.
    model._init_weights(model.classifier)
    return model


def load_masked_lm(path: str, model_name: str, **config_updates: Any) -> torch.nn.Module:
    """An MLM model with the architecture and weights of the Hugging Face folder `path` (`model.pretrained_model_name`):
    this package's export, a transformers BERT or the original MosaicBERT release. A start without an MLM head
    (a fine-tuned classifier) gets a fresh one, said in the log."""
    model, info = _load_path(path, model_name, MASKED_LMS, "the YAML says model.name", **config_updates)
    fresh = [k for k in info["missing_keys"] + loading_key_names(info["mismatched_keys"]) if not k.startswith("cls.")]
    if fresh:
        raise UserError(f"{path} lacks encoder weights (e.g. {fresh[0]}) or has other widths than the model "
                        f"config asks for; remove the model_config overrides that change the architecture.")
    if info["missing_keys"]:
        log.warning("%s has no MLM head (%s): the head starts freshly initialised.", path, info["missing_keys"][0])
    return model


def load_weights_into(model: torch.nn.Module, path: str, model_name: str) -> None:
    """`load_path` of a pretraining run naming a Hugging Face folder: its weights into `model`, whose architecture
    the YAML gave. Shapes must match; the optimizer, schedule and data order start fresh."""
    # A copy: from_pretrained settles attention implementation details on the config it is given.
    loaded, info = _load_path(path, model_name, MASKED_LMS, "the YAML says model.name", config=copy.deepcopy(model.config))
    different = loading_key_names(info["mismatched_keys"])
    if different:
        raise UserError(f"load_path {path} has other widths than the YAML's model (e.g. {different[0]}); set "
                        f"model.pretrained_model_name={path} instead to take the folder's architecture.")
    fresh = [k for k in info["missing_keys"] if not k.startswith("cls.")]
    if fresh:
        raise UserError(f"load_path {path} lacks encoder weights (e.g. {fresh[0]}); is it the right architecture?")
    model.load_state_dict(loaded.state_dict())
