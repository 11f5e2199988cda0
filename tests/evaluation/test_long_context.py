"""Long context: the 512 / 1024 / 2048-token recipes, and scoring models at several lengths."""

from __future__ import annotations

import random
import re
import subprocess
import sys

from types import SimpleNamespace

import pytest
import torch
import yaml
from composer.core import Callback
from streaming import LocalDataset

from mosaicbert.builders import validate_entries
from mosaicbert.callbacks.jsonl_logger import read_jsonl
from mosaicbert.config import load_config
from mosaicbert.train import train

from conftest import DEMO_YAML, REPO, CrashAtBatch, pretrain, tiny_overrides

BASE = REPO / "yamls" / "base.yaml"
LENGTH_KEYS = {"run_name", "max_seq_len", "global_train_batch_size", "device_train_microbatch_size", "max_duration"}


def recipe(seq_len: int):
    return REPO / "yamls" / "pretrain" / f"mosaicbert-base-seqlen-{seq_len}.yaml"


@pytest.mark.parametrize("seq_len", [512, 1024, 2048])
def test_long_recipes_are_the_base_recipe_at_the_same_tokens_per_batch(clean_env, seq_len):
    base, long = (yaml.safe_load(path.read_text()) for path in (BASE, recipe(seq_len)))
    assert {k: v for k, v in long.items() if k not in LENGTH_KEYS} == {k: v for k, v in base.items() if k not in LENGTH_KEYS}
    config = load_config(recipe(seq_len), [])  # validates, with this machine's defaults filled in
    validate_entries(config)
    assert config.max_seq_len == seq_len
    assert config.global_train_batch_size * seq_len == 4096 * 128
    assert config.device_train_microbatch_size * seq_len == 128 * 128
    assert long["max_duration"] == "70000ba" and base["max_duration"] == f"{70000 * 4096}sp"


def test_the_two_phase_recipe_is_the_base_recipe_then_512_tokens(clean_env):
    base, two_phase = (yaml.safe_load(path.read_text()) for path in (BASE, REPO / "yamls" / "pretrain" / "mosaicbert-base-128-then-512.yaml"))
    keys = LENGTH_KEYS | {"seq_len_schedule"}
    assert {k: v for k, v in two_phase.items() if k not in keys} == {k: v for k, v in base.items() if k not in keys}
    config = load_config(REPO / "yamls" / "pretrain" / "mosaicbert-base-128-then-512.yaml", [])
    short, long = config.seq_len_schedule
    assert (short.max_seq_len, short.until, long.max_seq_len, long.until) == (128, "0.9dur", 512, "1dur")
    assert short.device_train_microbatch_size * 128 == config.device_train_microbatch_size * 512 == 128 * 128
    assert config.global_train_batch_size == base["global_train_batch_size"] and config.max_duration == "70000ba"


@pytest.mark.slow
def test_the_2048_recipe_trains_a_tiny_model_on_cpu(clean_env, sample_root, tmp_path):
    overrides = tiny_overrides(sample_root, tmp_path / "run", max_seq_len=2048, global_train_batch_size=4,
                               device_train_microbatch_size=2, max_duration="3ba", eval_interval="3ba",
                               save_interval="3ba", **{"train_loader.num_workers": 0, "eval_loader.num_workers": 0,
                                                       "tokenizer_name": sample_root / "tokenizer"})
    config = load_config(recipe(2048), overrides)
    assert config.max_seq_len == 2048 and config.precision == "fp32"  # the recipe's amp_bf16, on this CPU
    summary = train(config)
    assert summary["batches"] == 3
    assert 0 < summary["last_eval"]["eval/LanguageCrossEntropy"] < 20


# --------------------------------------------------------------------------- extrapolation (src/eval_lengths.py)


@pytest.fixture(scope="module")
def two_models(sample_root, tmp_path_factory):
    """A tiny MosaicBERT and a tiny Hugging Face BERT (position table of 512), each pretrained 4 steps at 64."""
    runs = tmp_path_factory.mktemp("runs")
    return (pretrain(DEMO_YAML, sample_root, runs / "mosaic"),
            pretrain(REPO / "yamls" / "pretrain" / "hf-bert-demo.yaml", sample_root, runs / "hf"))


@pytest.mark.slow
def test_lengths_are_scored_on_the_same_masks_and_bert_stops_at_its_position_table(two_models, sample_root, tmp_path):
    from mosaicbert.evaluation.lengths import evaluate_lengths

    texts = lambda source: iter(LocalDataset(local=str(sample_root / "val_small"))[i]["text"] for i in range(200))
    mosaic, bert = evaluate_lengths([str(path) for path in two_models], [32, 128, 600], texts,
                                    tokens_per_length=1200, progress=lambda line: None)
    assert [s.length for s in mosaic.scores] == [32, 128, 600]
    assert all(s.cross_entropy is not None and s.masked_tokens > 0 for s in mosaic.scores)
    assert mosaic.position_limit is None and bert.position_limit == 512
    assert [s.masked_tokens for s in bert.scores[:2]] == [s.masked_tokens for s in mosaic.scores[:2]]  # same masks
    assert bert.scores[2].cross_entropy is None and bert.scores[2].note == "position table ends at 512"
    assert mosaic.trained_at == bert.trained_at == 64


def test_a_lengths_score_is_the_models_own_mean_loss_on_those_pieces(two_models, sample_root):
    """Independent check of the scoring: the mean cross-entropy the model's forward reports for the same pieces
    (all in one batch), and the accuracy recomputed from full logits."""
    from mosaicbert.evaluation.lengths import masked_pieces, score_pieces, token_stream
    from mosaicbert.export.writer import read_trained_model, source_tokenizer

    source = read_trained_model(two_models[0])
    _, tokenizer = source_tokenizer(source, str(sample_root / "tokenizer"), two_models[0])
    texts = (LocalDataset(local=str(sample_root / "val_small"))[i]["text"] for i in range(200))
    pieces = masked_pieces(token_stream(texts, tokenizer, 5 * 254), 256, 5, tokenizer, 0.15)
    model = source.model.eval()
    loss, error, accuracy, count = score_pieces(model, pieces, tokens_per_batch=512)  # three batches
    with torch.no_grad():
        reference = model(**pieces)
        full = model(**{k: v for k, v in pieces.items() if k != "labels"}).logits
    selected = pieces["labels"] != -100
    assert count == int(selected.sum()) > 0
    assert loss == pytest.approx(float(reference.loss), rel=1e-5)
    assert 0 < error < loss / 10
    assert accuracy == pytest.approx(float((full[selected].argmax(-1) == pieces["labels"][selected]).double().mean()))
    assert (pieces["input_ids"][:, 0] == tokenizer.cls_token_id).all() and (pieces["input_ids"][:, -1] == tokenizer.sep_token_id).all()


@pytest.mark.slow
def test_eval_lengths_writes_a_table_and_a_plot(two_models, sample_root, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "src/eval_lengths.py", str(two_models[0]), "--lengths", "32", "96",
               "--tokens-per-length", "600", "--data", str(sample_root), "--split", "val_small", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"results.json", "table.md", "lengths.png"}
    assert "| 32 | 96 |" in (out / "table.md").read_text()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error:") and "--overwrite" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "missing.pt does not exist"),
    (["{ckpt}", "--lengths", "4"], "at least 8 tokens"),
    (["{ckpt}", "--tokens-per-length", "100000000"], "fewer than the"),
    (["{ckpt}", "--data", "{tmp}/nowhere"], "no MDS dataset at"),
])
def test_eval_lengths_bad_input_is_one_error_line(two_models, sample_root, tmp_path, capsys, args, message):
    sys.path.insert(0, str(REPO / "src"))
    import eval_lengths

    args = [a.format(ckpt=two_models[0], tmp=tmp_path) for a in args]
    if "--data" not in args:
        args += ["--data", str(sample_root), "--split", "val_small"]
    assert eval_lengths.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- sequence-length schedule

SCHEDULE = "[{max_seq_len: 32, until: 0.5dur, device_train_microbatch_size: 16}, {max_seq_len: 64, until: 1dur}]"


def test_a_cut_batch_is_what_the_tokenizer_gives_at_the_shorter_length(sample_root):
    """Independent check of the cut: the tokenizer's own truncation at the phase's length."""
    from mosaicbert.data.length_schedule import cut_to_length
    from mosaicbert.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(str(sample_root / "tokenizer"), 64)
    texts = [LocalDataset(local=str(sample_root / "val_small"))[i]["text"] for i in range(12)] + ["A few words."]
    at = {n: tokenizer(texts, truncation=True, padding="max_length", max_length=n, return_tensors="pt")
          for n in (32, 64)}
    labels = at[64]["input_ids"].clone()
    batch = {"input_ids": at[64]["input_ids"], "attention_mask": at[64]["attention_mask"], "labels": labels}
    cut = cut_to_length(batch, 32, tokenizer.sep_token_id)
    assert torch.equal(cut["input_ids"], at[32]["input_ids"])
    assert torch.equal(cut["attention_mask"], at[32]["attention_mask"])
    runs_on = at[64]["attention_mask"][:, 32] == 1
    assert 0 < int(runs_on.sum()) < len(texts)  # both kinds of row are in the batch
    assert (cut["labels"][runs_on, 31] == -100).all()  # the [SEP] a cut row ends in is no target
    assert torch.equal(cut["labels"][~runs_on], labels[~runs_on, :32]) and torch.equal(cut["labels"][:, :31], labels[:, :31])


@pytest.mark.parametrize("until, batch, max_duration, length", [
    (["0.9dur", "1dur"], 89, "100ba", 32), (["0.9dur", "1dur"], 90, "100ba", 64), (["3ba", "8ba"], 2, "8ba", 32),
    (["3ba", "8ba"], 3, "8ba", 64), (["3ba", "8ba"], 8, "8ba", 64),
    # An epoch-long run is measured in batches (10 per epoch here): Composer's own fraction stays 0 within an epoch.
    (["0.9dur", "1dur"], 8, "1ep", 32), (["0.9dur", "1dur"], 9, "1ep", 64), (["0.5dur", "1dur"], 9, "2ep", 32),
])
def test_the_phase_is_read_from_the_runs_progress(until, batch, max_duration, length):
    from composer.core import Time, TimeUnit

    from mosaicbert.data.length_schedule import LengthSchedule, Phase

    schedule = LengthSchedule([Phase(32, Time.from_timestring(until[0])), Phase(64, Time.from_timestring(until[1]))],
                              sep_token_id=3, packing=False, run_microbatch=8)
    assert schedule.phases[schedule.phase_at(progress(batch, max_duration))].max_seq_len == length


def progress(batch: int, max_duration: str, batches_per_epoch: int = 10):
    """A stand-in for Composer's State at `batch` of a run of `max_duration`."""
    from types import SimpleNamespace

    from composer.core import Time, TimeUnit

    duration = Time.from_timestring(max_duration)
    epoch = batch // batches_per_epoch
    done = {TimeUnit.BATCH: batch, TimeUnit.EPOCH: epoch}[duration.unit]
    return SimpleNamespace(timestamp=SimpleNamespace(batch=Time(batch, TimeUnit.BATCH)), max_duration=duration,
                           dataloader_len=Time(batches_per_epoch, TimeUnit.BATCH),
                           get_elapsed_duration=lambda: Time(done / duration.value, TimeUnit.DURATION))


def test_a_phase_reached_is_kept_when_a_resumed_run_is_longer():
    """Resumed with a larger max_duration (or time budget), the share done shrinks: the run stays at its length."""
    from composer.core import Time

    from mosaicbert.data.length_schedule import LengthSchedule, Phase

    def schedule():
        return LengthSchedule([Phase(32, Time.from_timestring("0.5dur")), Phase(64, Time.from_timestring("1dur"))],
                              sep_token_id=3, packing=False, run_microbatch=8)

    first = schedule()
    first._follow(SimpleNamespace(**vars(progress(6, "10ba")), device_train_microbatch_size=8))
    assert first.phase.max_seq_len == 64
    resumed = schedule()
    resumed.load_state_dict(first.state_dict())
    assert resumed.phases[resumed.phase_at(progress(6, "20ba"))].max_seq_len == 64
    assert schedule().phases[schedule().phase_at(progress(6, "20ba"))].max_seq_len == 32  # without the record
    extended = LengthSchedule([Phase(64, Time.from_timestring("0.5dur")), Phase(128, Time.from_timestring("1dur"))],
                              sep_token_id=3, packing=False, run_microbatch=8)
    extended.load_state_dict(first.state_dict())  # resumed with a context-extension schedule: from 64 on
    assert extended.phase.max_seq_len == 64
    older = schedule()
    older.load_state_dict({})  # a checkpoint of this callback's first version
    assert older.phase.max_seq_len == 32


@pytest.mark.parametrize("schedule, extra, message", [
    ("[{max_seq_len: 64, until: 0.5dur}, {max_seq_len: 32, until: 1dur}]", {}, "increase phase by phase, got 64, 32"),
    ("[{max_seq_len: 32, until: 0.5dur}, {max_seq_len: 48, until: 1dur}]", {}, "set max_seq_len=48"),
    ("[{max_seq_len: 32, until: 0.5dur}, {max_seq_len: 64, until: 0.9dur}]", {}, "before the run does"),
    ("[{max_seq_len: 32, until: 6ba}, {max_seq_len: 64, until: 10ba}]", {}, "before the run's 12"),
    ("[{max_seq_len: 32, until: 0.5dur}, {max_seq_len: 64, until: 12ba}]", {}, "all in dur or all in ba"),
    ("[{max_seq_len: 32, until: 6ba}, {max_seq_len: 64, until: 12ba}]", {"max_duration": "2m"}, "no fixed number"),
    ("[{max_seq_len: 32, until: 6sp}, {max_seq_len: 64, until: 1dur}]", {}, "until=6sp"),
    ("[{max_seq_len: 32, until: 0.5dur, device_train_microbatch_size: 16}, {max_seq_len: 64, until: 1dur}]",
     {"device_train_microbatch_size": 4}, "more than the run's 4 x 64 = 256"),
    ("[{max_seq_len: 32, until: 0.5dur, device_train_microbatch_size: 6}, {max_seq_len: 64, until: 1dur}]", {},
     "divide the per-device batch of 16"),
    ("[]", {}, "at least one phase"),
])
def test_a_bad_length_schedule_is_refused_with_its_fix(clean_env, sample_root, tmp_path, schedule, extra, message):
    from mosaicbert.errors import ConfigError

    overrides = tiny_overrides(sample_root, tmp_path / "run", **extra) + [f"seq_len_schedule={schedule}"]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(DEMO_YAML, overrides)


class LengthSpy(Callback):
    """Each batch's shape and microbatch size as the model gets them."""

    def __init__(self):
        self.seen = []

    def after_dataloader(self, state, logger):
        self.seen.append((int(state.timestamp.batch), state.batch["input_ids"].shape[1],
                          state.device_train_microbatch_size))


@pytest.mark.slow
def test_a_length_schedule_switches_at_its_step_and_resumes_exactly_across_the_switch(clean_env, sample_root, tmp_path):
    """32 tokens (microbatch 16) for batches 0-3, then 64 (microbatch 8), packed; the same run killed before the
    switch and after it, each time resumed, ends with the uninterrupted run's weights."""
    def run(folder, *callbacks, **extra):
        overrides = tiny_overrides(sample_root, folder, max_duration="8ba", save_interval="3ba", eval_interval="8ba",
                                   **{"train_loader.packing": True}, **extra)
        return train(load_config(DEMO_YAML, overrides + [f"seq_len_schedule={SCHEDULE}"]), extra_callbacks=list(callbacks))

    spy = LengthSpy()
    straight = run(tmp_path / "straight", spy)
    assert spy.seen == [(b, 32, 16) for b in range(4)] + [(b, 64, 8) for b in range(4, 8)]
    logged = [r["data/max_seq_len"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if "data/max_seq_len" in r]
    assert logged == [32] * 4 + [64] * 4

    with pytest.raises(KeyboardInterrupt):  # killed at batch 4, its last checkpoint at 3: before the switch
        run(tmp_path / "resumed", CrashAtBatch(4))
    spy = LengthSpy()
    with pytest.raises(KeyboardInterrupt):  # resumed at 3, across the switch, killed again at 7
        run(tmp_path / "resumed", spy, CrashAtBatch(7), autoresume=True)
    assert spy.seen[:2] == [(3, 32, 16), (4, 64, 8)]
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "ep0-ba6-rank0.pt", map_location="cpu",
                      weights_only=False)["state"]["callbacks"]["LengthSchedule"] == {"max_seq_len": 64}
    spy = LengthSpy()
    resumed = run(tmp_path / "resumed", spy, autoresume=True)  # resumed at 6, after the switch
    assert spy.seen == [(6, 64, 8), (7, 64, 8)]
    assert resumed["batches"] == 8 and resumed["batches_this_run"] == 2
    a, b = (torch.load(s["checkpoint"], map_location="cpu", weights_only=False)["state"]["model"] for s in (straight, resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


# --------------------------------------------------------------------------- long-document fine-tuning

def random_texts(seed: int, count: int, most_words: int) -> list[str]:
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randrange(1, most_words))) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus_texts(sample_root) -> list[str]:
    """The sample corpus's training documents, read from its shards (building them again takes longer)."""
    train = LocalDataset(local=str(sample_root / "train"))
    return [train[i]["text"] for i in range(len(train))]


@pytest.fixture(scope="module")
def sample_tokenizer(sample_root):
    from mosaicbert.data.tokenizer import build_tokenizer

    return build_tokenizer(str(sample_root / "tokenizer"), 4096)


@pytest.mark.parametrize("max_seq_len", [16, 33, 64, 65, 128])
def test_head_truncation_of_pairs_shares_the_room_as_the_tokenizer_does(sample_tokenizer, max_seq_len):
    """The side-aware truncation's sharing of a pair, checked against the tokenizer's own longest-first truncation."""
    from mosaicbert.glue.data import Examples, truncate_sides

    a, b = random_texts(0, 300, 80) + ["alpha beta"] * 2, random_texts(1, 300, 80) + ["gamma delta"] * 2
    ids, types = truncate_sides(Examples(a, b, [0] * len(a)), sample_tokenizer, max_seq_len, "head")
    reference = sample_tokenizer(a, b, truncation=True, max_length=max_seq_len)
    assert ids == reference["input_ids"] and types == reference["token_type_ids"]


@pytest.mark.parametrize("side", ["tail", "head+tail"])
def test_tail_and_head_plus_tail_keep_a_texts_ends(sample_tokenizer, side):
    from mosaicbert.glue.data import Examples, TokenizedExamples

    texts = random_texts(2, 50, 300)
    dataset = TokenizedExamples(Examples(texts, None, [0] * len(texts)), sample_tokenizer, 64, False, truncation=side)
    cls, sep = sample_tokenizer.cls_token_id, sample_tokenizer.sep_token_id
    for text, ids in zip(texts, dataset.input_ids):
        body = sample_tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(body) <= 62:
            expected = body
        else:
            head = 0 if side == "tail" else round(62 * 0.25)  # 15 from the start, 47 from the end
            expected = body[:head] + body[len(body) - (62 - head):]
        assert ids == [cls, *expected, sep]
    assert any(len(sample_tokenizer(t, add_special_tokens=False)["input_ids"]) > 62 for t in texts)


def test_the_long_document_task_hides_its_cues_from_any_128_token_window(corpus_texts, sample_tokenizer, tmp_path):
    """Every document is 600-2,000 tokens and names its label twice, each cue at least 128 tokens from its end of
    the document: 128 tokens (head, tail or head+tail) see neither cue, the whole document both."""
    import csv

    from mosaicbert.glue.data import Examples, TokenizedExamples
    from mosaicbert.glue.demo_data import write_long_document_task

    count = lambda text: len(sample_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # noqa: E731
    out = write_long_document_task(tmp_path / "long", count, train_size=12, dev_size=6, texts=corpus_texts)
    assert sorted(p.name for p in out.iterdir()) == ["dev.csv", "train.csv"]
    rows = list(csv.DictReader((out / "train.csv").open(encoding="utf-8")))
    assert len(rows) == 12 and len({r["label"] for r in rows}) > 1
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    def cues(label: str) -> list[list[int]]:
        office, verdict = label.split("-")
        return [sample_tokenizer(cue, add_special_tokens=False)["input_ids"] for cue in
                (f"This case was opened by the {office} office.", f"In the end the case was {verdict}.")]

    def find(ids: list[int], cue: list[int]) -> int | None:
        return next((i for i in range(len(ids) - len(cue) + 1) if ids[i:i + len(cue)] == cue), None)

    whole = TokenizedExamples(Examples(texts, None, [0] * 12), sample_tokenizer, 4096, False)
    for ids, label in zip(whole.input_ids, labels):
        assert 600 <= len(ids) <= 2000
        (first, second), (at, at_second) = cues(label), [find(ids, cue) for cue in cues(label)]
        assert at >= 128 and len(ids) - (at_second + len(second)) >= 128
    for side in ("head", "tail", "head+tail"):
        short = TokenizedExamples(Examples(texts, None, [0] * 12), sample_tokenizer, 128, False, truncation=side)
        for ids, label in zip(short.input_ids, labels):
            assert [find(ids, cue[:3]) for cue in cues(label)] == [None, None]  # not even a cue's first 3 tokens


@pytest.mark.parametrize("override, message", [
    ("own_tasks.long.truncation=middle", "truncation must be one of head, tail, head+tail"),
    ("own_tasks.long.kind=token_classification", "token classification keeps a sentence's first words"),
])
def test_a_bad_truncation_is_refused(tmp_path, override, message):
    from mosaicbert.errors import ConfigError
    from mosaicbert.glue.config import load_glue_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_glue_config(REPO / "yamls" / "finetune" / "long-documents.yaml",
                         [f"starting_checkpoint={tmp_path}", f"run_folder={tmp_path / 'run'}", override])


def test_hf_bert_fine_tuning_past_its_position_table_is_one_error(two_models, tmp_path, capsys):
    from mosaicbert.glue.runner import main as glue_main

    run = tmp_path / "run"
    assert glue_main([str(REPO / "yamls" / "finetune" / "long-documents.yaml"), f"starting_checkpoint={two_models[1]}",
                      "model_name=hf_bert", "max_seq_len=1024", f"run_folder={run}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: max_seq_len=1024 does not fit the position table of 512 entries") and err.count("\n") == 1
    assert not run.exists()


@pytest.mark.slow
def test_mosaicbert_fine_tunes_on_whole_long_documents(two_models, sample_root, sample_tokenizer, corpus_texts, tmp_path):
    """A tiny MosaicBERT (pretrained at 64 tokens) fine-tuned and evaluated on documents of up to 2,000 tokens."""
    import json

    from mosaicbert.glue.demo_data import write_long_document_task
    from mosaicbert.glue.runner import main as glue_main

    count = lambda text: len(sample_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # noqa: E731
    data = write_long_document_task(tmp_path / "long", count, train_size=8, dev_size=4, texts=corpus_texts)
    run = tmp_path / "run"
    assert glue_main([str(REPO / "yamls" / "finetune" / "long-documents.yaml"), f"starting_checkpoint={two_models[0]}",
                      f"tokenizer_name={sample_root / 'tokenizer'}", f"run_folder={run}",
                      f"own_tasks.long.train={data / 'train.csv'}", f"own_tasks.long.dev={data / 'dev.csv'}",
                      "own_tasks.long.epochs=1", "own_tasks.long.batch_size=4"]) == 0
    (result_file,) = (run / "results").glob("long-seed19-*.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "ok" and 0 <= result["metrics"]["dev"]["accuracy"] <= 1
    assert result["job"]["max_seq_len"] == 2048 and result["job"]["own_task"]["truncation"] == "head+tail"
    predictions = result_file.with_name(result_file.stem + "-dev-predictions.jsonl").read_text().splitlines()
    assert [json.loads(row)["id"] for row in predictions] == ["dev0", "dev1", "dev2", "dev3"]


def test_the_default_truncation_leaves_own_tasks_job_hashes_as_they_were():
    """Results of own tasks saved before `truncation` existed are still their jobs' (the spec hash is unchanged)."""
    from mosaicbert.glue.own_task import OwnTask, from_json, job_definition

    head, tail = job_definition(OwnTask(name="t")), job_definition(OwnTask(name="t", truncation="tail"))
    assert "truncation" not in head and tail["truncation"] == "tail"
    assert from_json(head).truncation == "head" and from_json(tail).truncation == "tail"
