from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streaming import LocalDataset

from mosaicbert.data import cli as prep_cli
from mosaicbert.data import prep
from mosaicbert.data.text_dataset import PREP_INFO
from mosaicbert.data.tokenizer import build_tokenizer, padded_vocab_size
from mosaicbert.errors import UserError

from conftest import REPO
from helpers.data import write_c4_files


def read_texts(root: Path, split: str) -> list[str]:
    return [sample["text"] for sample in LocalDataset(str(root / split))]


def test_c4_local_files_round_trip(tmp_path):
    texts = write_c4_files(tmp_path / "c4raw")
    out = tmp_path / "c4"
    counts = prep_cli.main(["c4", "--local-dir", str(tmp_path / "c4raw"), "--out-root", str(out)])
    assert counts == {"train": 30, "train_small": 30, "val": 12, "val_small": 12}
    assert read_texts(out, "train") == texts["train"]
    assert read_texts(out, "val") == texts["validation"]
    info = json.loads((out / "train" / PREP_INFO).read_text())
    assert info["documents"] == 30 and info["columns"] == {"text": "str"}


def test_max_docs_caps_every_split(tmp_path):
    texts = write_c4_files(tmp_path / "c4raw")
    out = tmp_path / "c4"
    counts = prep_cli.main(["c4", "--local-dir", str(tmp_path / "c4raw"), "--out-root", str(out),
                                   "--max-docs", "7", "--splits", "train", "val_small"])
    assert counts == {"train": 7, "val_small": 7}
    assert read_texts(out, "train") == texts["train"][:7]


def test_pretokenized_column_holds_uint16_ids(tmp_path, sample_root):
    write_c4_files(tmp_path / "c4raw")
    out = tmp_path / "c4tok"
    tokenizer_dir = str(sample_root / "tokenizer")
    prep_cli.main(["c4", "--local-dir", str(tmp_path / "c4raw"), "--out-root", str(out),
                          "--splits", "val", "--tokenizer", tokenizer_dir])
    tokenizer = build_tokenizer(tokenizer_dir, 128)
    samples = list(LocalDataset(str(out / "val")))
    for sample in samples:
        assert sample["input_ids"].dtype == np.uint16
        assert sample["input_ids"].tolist() == tokenizer(sample["text"], add_special_tokens=False)["input_ids"]
    info = json.loads((out / "val" / PREP_INFO).read_text())
    assert info["tokenizer_vocab_size"] == len(tokenizer)


def test_existing_split_is_kept_unless_asked(tmp_path):
    write_c4_files(tmp_path / "c4raw")
    out = tmp_path / "c4"
    args = ["c4", "--local-dir", str(tmp_path / "c4raw"), "--out-root", str(out), "--splits", "val"]
    prep_cli.main(args)
    before = (out / "val" / "index.json").read_bytes()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prep_cli.main(args + ["--max-docs", "3"])
    assert (out / "val" / "index.json").read_bytes() == before
    assert prep_cli.main(args + ["--skip-existing"]) == {}
    prep_cli.main(args + ["--max-docs", "3", "--overwrite"])
    assert len(read_texts(out, "val")) == 3


def test_interrupted_split_leaves_nothing_that_looks_complete(tmp_path):
    def documents():
        yield from (f"document {i} " * 20 for i in range(700))
        raise KeyboardInterrupt  # the user pressed Ctrl-C half way

    with pytest.raises(KeyboardInterrupt):
        prep.write_split(tmp_path, "train", documents())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_prep_killed_mid_write_then_run_again_completes(tmp_path):
    write_c4_files(tmp_path / "c4raw", n_train=50000, n_val=4)
    command = [sys.executable, str(REPO / "data_prep" / "convert_dataset.py"), "c4", "--local-dir",
               str(tmp_path / "c4raw"), "--splits", "train", "--skip-existing"]
    reference = subprocess.run(command + ["--out-root", str(tmp_path / "reference")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "c4"
    killed = subprocess.Popen(command + ["--out-root", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".train.partial-") for p in out.glob(".*")):
        assert killed.poll() is None and time.monotonic() < deadline, "the split was written before it could be killed"
        time.sleep(0.01)
    time.sleep(0.5)
    assert killed.poll() is None, "the split was written before it could be killed"
    killed.kill()  # SIGKILL mid-write: no cleanup code runs
    killed.wait()
    assert not (out / "train").exists()  # nothing that looks complete
    again = subprocess.run(command + ["--out-root", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_texts(out, "train") == read_texts(tmp_path / "reference", "train")
    assert [p.name for p in out.iterdir()] == ["train"]  # the killed run's staging folder is gone


@pytest.mark.slow
def test_sample_corpus_is_deterministic_english_and_split_by_module():
    first, second = prep.sample_corpus(), prep.sample_corpus()
    assert first == second
    assert len(first["train"]) > 2000 and len(first["validation"]) > 100
    assert not set(first["train"]) & set(first["validation"])
    words = " ".join(first["train"][:200]).lower().split()
    assert sum(w in {"the", "a", "of", "is", "to"} for w in words) > 0.05 * len(words)


def test_sample_shards_layout_and_tokenizer(sample_root):
    for split in prep.SPLITS:
        assert (sample_root / split / "index.json").is_file()
    assert len(read_texts(sample_root, "train_small")) == 1000
    tokenizer = build_tokenizer(str(sample_root / "tokenizer"), 128)
    assert len(tokenizer) == 2048
    assert tokenizer.pad_token_id == 0
    ids = tokenizer("Return the value of the attribute.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids


def test_hub_unreachable_explains_offline_options(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/c4' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="--local-dir") as err:
        next(prep.c4_documents("train"))
    assert "make sample-shards" in str(err.value)


def test_missing_local_tokenizer_names_the_make_target(tmp_path):
    with pytest.raises(UserError, match="make sample-shards"):
        build_tokenizer(str(tmp_path / "no" / "tokenizer"), 128)


def test_vocab_padding():
    assert padded_vocab_size(30522, 64) == 30528
    assert padded_vocab_size(30528, 64) == 30528
    assert padded_vocab_size(30522, 1) == 30522


def test_unreachable_tokenizer_hub_explains_offline_options(monkeypatch):
    import mosaicbert.data.tokenizer as tokenizer_module

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(tokenizer_module.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1") as err:
        build_tokenizer("bert-base-uncased", 128)
    assert "tokenizer_name=data/sample/tokenizer" in str(err.value)
