"""Streaming MLM data: MDS text shards -> fixed-length token batches with masking."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from composer.core import DataSpec
from streaming import StreamingDataset
from torch.utils.data import DataLoader

from mosaicbert.config import LoaderConfig
from mosaicbert.data.length_schedule import LengthSchedule
from mosaicbert.data.mlm import MLMCollator
from mosaicbert.data.packing import PackingCollator, count_documents
from mosaicbert.data.remote import RemoteStream, ReportsFailedDownloads
from mosaicbert.data.shared_memory import block_prefix, release, streaming_handles
from mosaicbert.errors import DataNotFoundError, UserError

PREP_INFO = "mosaicbert_prep.json"  # written by data_prep next to index.json

log = logging.getLogger(__name__)


def _build_hint(local: str) -> str:
    targets = ["`make c4-shards` (C4 from the hub)", "`make sample-shards` (offline sample corpus)"]
    if "c4" not in str(local).lower():
        targets.reverse()
    return " or ".join(targets)


def check_local_split(local: str, split: str) -> None:
    """Fail early, naming the shard and the make target, when a local dataset split is missing, empty, or has a
    missing or truncated shard (compared with the sizes its index.json records: a few `stat` calls)."""
    folder = Path(local) / split
    if not (folder / "index.json").is_file():
        raise DataNotFoundError(f"no MDS dataset at {folder} (index.json missing). Build it with {_build_hint(local)}, "
                                "or point data_local at an existing dataset root.")
    rebuild = f"delete {folder} and rebuild it with {_build_hint(local)}"
    try:
        shards = json.loads((folder / "index.json").read_text())["shards"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataNotFoundError(f"{folder}/index.json is not an MDS index (damaged or cut short); {rebuild}.") from None
    if not sum(shard.get("samples", 0) for shard in shards):
        raise DataNotFoundError(f"{folder} holds no samples (empty dataset); {rebuild}, or choose another split.")
    for shard in shards:
        # A shard is kept as written (raw) or compressed (zip); streaming decompresses on first use.
        for form in ("raw_data", "zip_data"):
            entry = shard.get(form)
            path = folder / entry["basename"] if entry else None
            if path is not None and path.is_file():
                if path.stat().st_size != entry["bytes"]:
                    raise DataNotFoundError(f"shard {path} has {path.stat().st_size} bytes, its index says "
                                            f"{entry['bytes']}: it is truncated or damaged; {rebuild}.")
                break
        else:
            raise DataNotFoundError(f"shard {folder / shard['raw_data']['basename']} is missing; {rebuild}.")


def read_prep_info(local: str, split: str) -> dict[str, Any] | None:
    path = Path(local) / split / PREP_INFO
    return json.loads(path.read_text()) if path.is_file() else None


class StreamingTextDataset(ReportsFailedDownloads):
    """A StreamingDataset of documents, tokenized to `max_seq_len` (truncated or padded).

    Samples carry a `text` column and, when prepared with a tokenizer, an `input_ids`
    column of token ids without special tokens. As in the reference recipe, the part
    of a document beyond `max_seq_len` tokens is dropped.

    Each sample also gets a `mask_seed` from (`mask_seed`, epoch, sample index) for the
    MLM collator: masks change every epoch (or never, with `fixed_masks`, which keeps
    evaluation comparable across checkpoints) and a resumed run masks exactly as an
    uninterrupted one would.
    """

    def __init__(self, tokenizer, max_seq_len: int, pretokenized: bool, mask_seed: int, fixed_masks: bool,
                 **streaming_kwargs: Any):
        before = {id(handle) for handle in streaming_handles()}
        super().__init__(**streaming_kwargs)
        # Choosing a prefix opened a handle on a block of every prefix already taken (by other
        # runs, other processes) and dropped it; Streaming's atexit registration keeps each one, a descriptor
        # and a mapping for the life of the process per dataset built (tests/test_soak.py).
        for handle in streaming_handles():
            if id(handle) not in before and block_prefix(handle) != self._shm_prefix_int:
                release(handle)
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.pretokenized = pretokenized
        self.mask_seed = mask_seed
        self.fixed_masks = fixed_masks

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = super().__getitem__(idx)
        if self.pretokenized:
            if "input_ids" not in sample:
                raise UserError("train/eval loader has pretokenized=true but the dataset has no input_ids column; "
                                "re-run data prep with --tokenizer, or set pretokenized=false.")
            tokens = self._from_ids(np.asarray(sample["input_ids"], dtype=np.int64))
        else:
            encoded = self.tokenizer(
                sample["text"], truncation=True, padding="max_length", max_length=self.max_seq_len, return_tensors="pt"
            )
            tokens = {
                "input_ids": encoded["input_ids"][0],
                "token_type_ids": torch.zeros(self.max_seq_len, dtype=torch.long),
                "attention_mask": encoded["attention_mask"][0],
            }
        epoch = 0 if self.fixed_masks else max(self.next_epoch - 1, 0)  # next_epoch is set when iteration starts
        tokens["mask_seed"] = int(np.random.SeedSequence([self.mask_seed, epoch, idx]).generate_state(1, np.uint64)[0])
        return tokens

    def _from_ids(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        body = torch.from_numpy(ids[: self.max_seq_len - 2])
        tokens = torch.cat([torch.tensor([tok.cls_token_id]), body, torch.tensor([tok.sep_token_id])])
        input_ids = torch.full((self.max_seq_len,), tok.pad_token_id, dtype=torch.long)
        input_ids[: len(tokens)] = tokens
        attention_mask = torch.zeros(self.max_seq_len, dtype=torch.long)
        attention_mask[: len(tokens)] = 1
        return {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids), "attention_mask": attention_mask}


def count_real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Throughput counts tokens the model reads, not padding (packed masks number documents: count non-zeros)."""
    return int(batch["attention_mask"].count_nonzero())


def ignore_stop_signal(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM. Slurm's warning before a time limit (and preemption) goes to
    every process of the job, workers included; a worker that dies of it makes the training step fail
    before the trainer can checkpoint (callbacks/checkpoint_on_signal.py). The workers still end with
    their loader, and with the trainer if it dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check_prep_info(info: dict[str, Any], where: str, cfg: LoaderConfig, vocab_size: int, max_seq_len: int) -> None:
    """Refuse token ids from another vocabulary; warn where chunked documents do not fit the run's sequences."""
    if cfg.pretokenized and info.get("tokenizer_vocab_size") not in (None, vocab_size):
        raise UserError(
            f"{where} was tokenized with a {info['tokenizer_vocab_size']}-token vocabulary "
            f"({info.get('tokenizer')}) but the run uses {vocab_size} tokens; set pretokenized=false "
            "or prepare the data with the run's tokenizer."
        )
    chunked_at = info.get("max_seq_len") if info.get("chunk") else None
    if chunked_at is not None and chunked_at > max_seq_len:
        log.warning("%s was cut into %d-token pieces (--chunk --max-seq-len %d) but the run's max_seq_len is %d: "
                    "each piece loses its tokens past %d. Set max_seq_len=%d, or prepare again with "
                    "--max-seq-len %d.", where, chunked_at - 2, chunked_at, max_seq_len, max_seq_len - 2,
                    chunked_at, max_seq_len)
    elif chunked_at is not None and chunked_at < max_seq_len and not cfg.packing:
        log.warning("%s was cut into %d-token pieces but the run's max_seq_len is %d: most of each sequence is "
                    "padding. Set packing=true on the loader (MosaicBERT), max_seq_len=%d, or prepare again with "
                    "--max-seq-len %d.", where, chunked_at - 2, max_seq_len, chunked_at, max_seq_len)


def build_mlm_dataloader(cfg: LoaderConfig, tokenizer, max_seq_len: int, device_batch_size: int, seed: int,
                         pin_memory: bool = False, length_schedule: LengthSchedule | None = None) -> DataSpec:
    """Batches of `max_seq_len` tokens, masked (and packed). With a `length_schedule`, each batch is cut to the
    current phase's length (and packed there) on its way to the device."""
    if cfg.remote is None:
        check_local_split(cfg.local, cfg.split)
        info = read_prep_info(cfg.local, cfg.split)
        if info is not None:
            check_prep_info(info, f"{cfg.local}/{cfg.split}", cfg, len(tokenizer), max_seq_len)
    # A remote split is downloaded into the cache <local>/<split> by a stream that reports failed downloads.
    source = {"local": cfg.local, "split": cfg.split} if cfg.remote is None else \
        {"streams": [RemoteStream(remote=cfg.remote, local=cfg.local, split=cfg.split)]}
    dataset = StreamingTextDataset(
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        pretokenized=cfg.pretokenized,
        mask_seed=seed,
        fixed_masks=cfg.fixed_masks,
        **source,
        shuffle=cfg.shuffle,
        shuffle_seed=cfg.shuffle_seed,
        num_canonical_nodes=cfg.num_canonical_nodes,
        predownload=cfg.predownload,
        batch_size=device_batch_size,
    )
    collate = MLMCollator.for_tokenizer(tokenizer, cfg.mlm_probability)
    loader = DataLoader(
        dataset,
        batch_size=device_batch_size,
        collate_fn=PackingCollator(collate) if cfg.packing and length_schedule is None else collate,
        num_workers=cfg.num_workers,
        drop_last=cfg.drop_last,
        # For GPU runs only: on a GPU host, a CPU run that pinned would open a CUDA context per rank on GPU 0.
        pin_memory=pin_memory,
        persistent_workers=cfg.num_workers > 0,
        worker_init_fn=ignore_stop_signal,
        prefetch_factor=2 if cfg.num_workers > 0 else None,
        # Its own generator: creating an iterator must not consume the global RNG that dropout
        # uses, or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    # Packed or not, a sample is a document: Composer's sample counts (and Streaming's resumption) stay in documents.
    return DataSpec(loader, get_num_tokens_in_batch=count_real_tokens,
                    get_num_samples_in_batch=count_documents if cfg.packing else None,
                    batch_transforms=length_schedule)
