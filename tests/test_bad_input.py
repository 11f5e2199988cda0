"""Bad input to pretraining: one clear message naming the problem and the fix, exit 2, no traceback, nothing written.

Each case runs the CLI entry (`mosaicbert.train.main`, what `composer src/main.py` calls) on the tiny recipe with
one thing wrong. GLUE's and the sweep's own cases: tests/glue/test_glue.py (a missing task file), tests/sweep/test_sweep.py
(an empty grid and other bad sweeps).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mosaicbert.train import main

from conftest import DEMO_YAML, REPO, tiny_overrides

HF_BERT_YAML = REPO / "yamls" / "pretrain" / "hf-bert-demo.yaml"


@pytest.fixture(scope="module")
def trained_checkpoint(sample_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([str(DEMO_YAML), *tiny_overrides(sample_root, run, max_duration="2ba", save_interval="2ba")]) == 0
    return run / "checkpoints" / "ep0-ba2-rank0.pt"


def damaged_split(sample_root: Path, root: Path, how: str) -> Path:
    """A copy of the sample corpus whose `val_small` split is empty or has a truncated shard."""
    shutil.copytree(sample_root, root, ignore=shutil.ignore_patterns("train*"))
    shutil.copytree(sample_root / "train_small", root / "train")  # a smaller training split, same layout
    split = root / "val_small"
    if how == "empty":
        for shard in split.glob("shard.*"):
            shard.unlink()
        (split / "index.json").write_text(json.dumps({"shards": [], "version": 2}))
    else:
        shard = next(split.glob("shard.*.mds"))
        shard.write_bytes(shard.read_bytes()[:1000])
    return root


def case(name, tmp_path, sample_root, trained_checkpoint):
    """(recipe, extra overrides, message fragment) of one bad-input case."""
    if name == "malformed yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("model: {name: mosaic_bert\noptimizer: [\n")
        return bad, None, "could not read"
    if name == "unknown key":
        return DEMO_YAML, {"max_duraton": "5ba"}, "unknown key 'max_duraton'. Did you mean 'max_duration'?"
    if name == "wrong type":
        return DEMO_YAML, {"global_train_batch_size": "many"}, "global_train_batch_size: expected int"
    if name == "impossible batch arithmetic":
        return DEMO_YAML, {"device_train_microbatch_size": 32}, "microbatch"
    if name == "missing data folder":
        return DEMO_YAML, {"data_local": str(tmp_path / "nowhere")}, "make sample-shards"
    if name == "empty dataset":
        return DEMO_YAML, {"data_local": str(damaged_split(sample_root, tmp_path / "data", "empty"))}, "holds no samples"
    if name == "truncated shard":
        root = damaged_split(sample_root, tmp_path / "data", "truncated")
        return DEMO_YAML, {"data_local": str(root)}, "truncated or damaged; delete"
    if name == "missing checkpoint":
        return DEMO_YAML, {"load_path": str(tmp_path / "nope.pt")}, "does not exist"
    if name == "truncated checkpoint":
        cut = tmp_path / "cut.pt"
        cut.write_bytes(trained_checkpoint.read_bytes()[:5000])
        return DEMO_YAML, {"load_path": str(cut)}, "cannot be read"
    if name == "incompatible checkpoint":
        return DEMO_YAML, {"load_path": str(trained_checkpoint), "model.model_config.hidden_size": 32,
                           "model.model_config.intermediate_size": 64}, "holds another architecture"
    if name == "tokenizer larger than the vocabulary":
        return DEMO_YAML, {"model.model_config.vocab_size": 64}, "smaller than the tokenizer"
    if name == "sequence longer than the position table":
        return HF_BERT_YAML, {"max_seq_len": 128, "model.model_config.max_position_embeddings": 64}, "does not fit"
    if name == "length schedule not increasing":
        return DEMO_YAML, {"seq_len_schedule": "[{max_seq_len: 64, until: 0.5dur}, {max_seq_len: 32, until: 1dur}]"}, \
            "increase phase by phase"
    raise AssertionError(name)


CASES = ["malformed yaml", "unknown key", "wrong type", "impossible batch arithmetic", "missing data folder",
         "empty dataset", "truncated shard", "missing checkpoint", "truncated checkpoint", "incompatible checkpoint",
         "tokenizer larger than the vocabulary", "sequence longer than the position table",
         "length schedule not increasing"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_message_exit_2_and_nothing_written(name, clean_env, sample_root, trained_checkpoint,
                                                             tmp_path, capsys):
    recipe, extra, message = case(name, tmp_path, sample_root, trained_checkpoint)
    run = tmp_path / "run"
    overrides = tiny_overrides(sample_root, run, **(extra or {})) if extra is not None else []
    assert main([str(recipe), *overrides]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not run.exists()  # no run folder, logs or checkpoints from a run that could not start


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write_removes_the_partial_file(clean_env, sample_root, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) stands in for a full disk: the checkpoint write fails part way."""
    run = tmp_path / "run"
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))\n"
              "from mosaicbert.train import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(DEMO_YAML),
                           *tiny_overrides(sample_root, run, max_duration="2ba", save_interval="2ba")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: could not write checkpoint" in done.stderr and "File too large" in done.stderr
    assert "Traceback" not in done.stderr
    # The kernel refused the write (EFBIG): no checkpoint that looks complete, no partial file left.
    assert not list((run / "checkpoints").glob("*.pt")) and not list((run / "checkpoints").glob(".partial-*"))
