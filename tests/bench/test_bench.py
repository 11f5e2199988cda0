"""The throughput benchmark (mosaicbert/bench, benchmarks/throughput.py): batches, profiles, measurements, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from composer.core import Event, Precision

from conftest import REPO
from mosaicbert.bench import lengths, measure, report, throughput
from mosaicbert.bench.throughput import run_case
from mosaicbert.builders import build_section
from mosaicbert.config import load_config

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
RECIPE = REPO / "yamls" / "base.yaml"


def test_batches_follow_the_profile_cut_at_the_sequence_length():
    profile = lengths.LengthProfile("t", "test", np.array([5, 20, 300, 64]))
    batches = lengths.make_batches(profile, num_batches=3, batch_size=16, seq_len=64, vocab_size=30528,
                                   mlm_probability=0.3, seed=1)
    for batch in batches:
        mask = batch["attention_mask"]
        seqlens = mask.sum(1)
        assert set(seqlens.tolist()) <= {5, 20, 64}  # 300 is cut to 64
        assert bool((mask[:, :-1] >= mask[:, 1:]).all())  # real tokens first, then padding
        ids, labels = batch["input_ids"], batch["labels"]
        rows = torch.arange(16)
        assert bool((ids[:, 0] == lengths.CLS).all()) and bool((ids[rows, seqlens - 1] == lengths.SEP).all())
        assert bool((ids[mask == 0] == lengths.PAD).all())
        labelled = labels != -100
        assert not bool(labelled[mask == 0].any()) and not bool(labelled[:, 0].any())
        assert not bool(labelled[rows, seqlens - 1].any())
    masked = sum(int((b["labels"] != -100).sum()) for b in batches)
    candidates = sum(int(b["attention_mask"].sum()) - 2 * 16 for b in batches)
    assert 0.2 < masked / candidates < 0.4
    again = lengths.make_batches(profile, 3, 16, 64, 30528, 0.3, seed=1)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(batches, again) for k in a)


def test_padding_fraction_is_the_mean_gap_of_the_cut_lengths():
    profile = lengths.LengthProfile("t", "test", np.array([10, 128, 500, 64]))
    expected = 1 - (10 + 128 + 128 + 64) / (4 * 128)
    assert profile.padding_fraction(128) == pytest.approx(expected)
    assert lengths.full_profile(128).padding_fraction(128) == 0


def test_histogram_round_trip_keeps_lengths_and_source(tmp_path):
    profile = lengths.LengthProfile("x", "C4 en validation, bert-base-uncased", np.array([3, 3, 7, 129, 7, 3]))
    path = tmp_path / "c4_en.csv"
    lengths.write_histogram(profile, path)
    back = lengths.read_histogram(path)
    assert sorted(back.lengths.tolist()) == sorted(profile.lengths.tolist())
    assert back.source == profile.source and back.name == "c4_en"
    assert not list(tmp_path.glob("*.partial"))


def test_tokenized_profile_counts_tokens_plus_cls_and_sep(sample_root):
    from streaming import StreamingDataset
    from transformers import AutoTokenizer

    profile = lengths.tokenized_profile(sample_root, "val_small", max_documents=50)
    tokenizer = AutoTokenizer.from_pretrained(str(sample_root / "tokenizer"))
    dataset = StreamingDataset(local=str(sample_root / "val_small"), shuffle=False, batch_size=1)
    expected = [len(tokenizer(dataset[i]["text"])["input_ids"]) for i in range(min(50, len(dataset)))]
    assert profile.lengths.tolist() == expected  # the tokenizer's own [CLS] ... [SEP] encoding


def test_missing_corpus_names_the_make_target(tmp_path):
    with pytest.raises(lengths.UserError, match="make sample-shards"):
        lengths.tokenized_profile(tmp_path, "train")
    with pytest.raises(lengths.UserError, match="length_profile.py"):
        lengths.read_histogram(tmp_path / "c4_en.csv")


def test_flop_count_matches_the_formula_for_a_linear_layer():
    model = torch.nn.Linear(48, 80)

    class Loss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, **_):
            return type("Out", (), {"loss": self.inner(x).square().mean()})()

    contender = measure.Contender("linear", Loss(), "", None)
    contender.batches = [{"x": torch.randn(16, 48, requires_grad=False)}]
    flops = measure.count_flops(contender)
    # forward 2*n*in*out; backward: the weight gradient only (the input needs none), 2*n*in*out
    assert flops == 2 * (2 * 16 * 48 * 80)


def test_attention_flops_are_counted_for_the_cpu_kernel_and_flash_varlen():
    """torch's counter has no formula for SDPA's CPU flash kernel; without ours attention would count 0."""
    b, h, s, d = 2, 3, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    counter = measure.FlopCounterMode(display=False, custom_mapping=measure.flop_formulas())
    with counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(b, h, s, s)).sum().backward()
    forward = 2 * (2 * b * h * s * s * d)  # QK^T and PV
    assert counter.get_total_flops() == forward + 5 * forward // 2  # backward: five products
    cu_seqlens = torch.tensor([0, 5, 16, 40], dtype=torch.int32)
    per_sequence = sum(4 * n * n * h * d for n in (5, 11, 24))
    assert measure.flash_varlen_flops((40, h, d), cu_seqlens, backward=False) == per_sequence
    assert measure.flash_varlen_flops((40, h, d), cu_seqlens, backward=True) == 5 * per_sequence // 2


def test_sliding_window_attention_counts_only_the_pairs_in_the_window():
    """ModernBERT's local layers: FlashAttention's window (left, right) lets query i see keys i-left .. i+right."""
    h, d = 3, 8
    cu_seqlens = torch.tensor([0, 5, 16], dtype=torch.int32)  # sequences of 5 and 11 tokens
    # Keys each query sees, by hand. Window (2, 2): 5 tokens 3 4 5 4 3; 11 tokens 3 4 5 5 5 5 5 5 5 4 3.
    pairs = (3 + 4 + 5 + 4 + 3) + (3 + 4 + 7 * 5 + 4 + 3)
    assert measure.flash_varlen_flops((16, h, d), cu_seqlens, backward=False, window=(2, 2)) == 4 * pairs * h * d
    assert measure.flash_varlen_flops((16, h, d), cu_seqlens, backward=True, window=(2, 2)) == 10 * pairs * h * d
    # Window (3, 0), keys behind only: 5 tokens 1 2 3 4 4; 11 tokens 1 2 3 4 4 4 4 4 4 4 4.
    assert measure.attended_pairs(cu_seqlens.diff(), (3, 0)) == (1 + 2 + 3 + 4 + 4) + (1 + 2 + 3 + 8 * 4)
    # A window wider than the sequence, or none (-1: a global layer), is full attention.
    assert measure.attended_pairs(cu_seqlens.diff(), (64, 64)) == measure.attended_pairs(cu_seqlens.diff()) == 25 + 121


def test_flash_attn_ops_are_counted_with_their_window(monkeypatch):
    """The formulas read flash-attn's op arguments as torch passes them: by position, trailing defaults left out."""
    monkeypatch.setattr(measure, "flash_varlen_ops", lambda: ("forward-op", "backward-op"))
    formulas = measure.flop_formulas()
    q = torch.empty(16, 3, 8)
    cu_seqlens = torch.tensor([0, 5, 16], dtype=torch.int32)
    full, windowed = (measure.flash_varlen_flops(q.shape, cu_seqlens, False, w) for w in ((-1, -1), (2, 2)))
    common = (q, q, q, cu_seqlens, cu_seqlens, 11, 11, 0.0, 0.35, False)
    assert formulas["forward-op"](*common, out_val=None) == full
    assert formulas["forward-op"](*common, 2, 2, 0.0, None, out_val=None) == windowed
    # dout, q, k, v, out, softmax_lse, dq, dk, dv; cu_seqlens .. causal as the forward's; window, softcap, alibi_slopes,
    # deterministic
    backward = (q, q, q, q, q, None, None, None, None, *common[3:], 2, 2, 0.0, None, False)
    assert formulas["backward-op"](*backward, out_val=None) == 5 * windowed // 2


def test_mfu_is_refused_in_one_line_when_flash_attn_has_no_op(monkeypatch):
    monkeypatch.setattr(measure, "flash_attn_version", lambda: "2.6.3")  # before 2.7: no `flash_attn::` ops
    line = measure.uncounted_attention(torch.device("cuda"))
    assert line.startswith("MFU not reported: flash-attn 2.6.3 ") and "flash-attn>=2.7" in line and "\n" not in line
    assert measure.uncounted_attention(torch.device("cpu")) is None  # flash-attn does not run on CPU
    monkeypatch.setattr(measure, "flash_attn_version", lambda: None)
    assert measure.uncounted_attention(torch.device("cuda")) is None


def layernorm_types(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]


def recipe_layernorm_types(device: str) -> list[type]:
    """The LayerNorm classes of MosaicBERT as yamls/base.yaml trains it on `device`: its algorithms applied at INIT
    with the run's precision, as Composer's Trainer does."""
    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

    with mock.patch.object(torch.cuda, "is_available", return_value=True):
        config = load_config(RECIPE, [f"device={device}"])
    model = MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=128, **TINY))
    state = SimpleNamespace(model=model, optimizers=None, _precision=Precision(config.precision))
    for algorithm in build_section(config, "algorithms"):
        if algorithm.match(Event.INIT, state):
            algorithm.apply(Event.INIT, state, None)
    return layernorm_types(model)


@pytest.mark.filterwarnings("ignore:Low Precision LayerNorm only applies")  # what CPU training warns too
@pytest.mark.parametrize("device, autocast_dtype", [("cpu", None), ("cpu", torch.bfloat16), ("cuda", torch.bfloat16)])
def test_mosaicbert_has_the_layernorm_its_recipe_trains_with(monkeypatch, device, autocast_dtype):
    from composer.algorithms.low_precision_layernorm.low_precision_layernorm import LPLayerNorm

    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)  # no GPU here
    model, note = measure.build_model("mosaicbert", TINY, 128, 32, torch.device(device), autocast_dtype)
    expected = recipe_layernorm_types("gpu" if device == "cuda" else "cpu")
    assert layernorm_types(model) == expected
    assert set(expected) == ({LPLayerNorm} if device == "cuda" else {torch.nn.LayerNorm})
    assert ("low-precision LayerNorm" in note) == (device == "cuda")


def test_gpu_batch_is_the_recipes_microbatch():
    recipe = load_config(RECIPE, ["device=cpu"])
    assert throughput.default_batch_size(torch.device("cuda")) == recipe.device_train_microbatch_size == 128
    assert throughput.default_batch_size(torch.device("cpu")) == 32


def test_sparse_modernbert_gives_transformers_sparse_loss():
    from transformers import ModernBertForMaskedLM

    torch.manual_seed(0)
    wrapped, _ = measure.build_model("modernbert", TINY, 128, 32, torch.device("cpu"))
    wrapped.eval()
    profile = lengths.LengthProfile("t", "test", np.array([7, 20, 32]))
    batch = lengths.make_batches(profile, 1, 4, 32, 128, 0.3, seed=2)[0]
    reference = ModernBertForMaskedLM(wrapped.mlm.config)
    reference.load_state_dict(wrapped.mlm.state_dict())
    reference.config.sparse_prediction = reference.sparse_prediction = True
    reference.eval()
    with torch.no_grad():
        ours = wrapped(**batch).loss
        theirs = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"]).loss
    torch.testing.assert_close(ours, theirs)


def test_step_memory_sees_a_large_temporary():
    class Big(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, **_):
            temporary = torch.ones(16 * 2**20 // 4) * self.w  # 16 MiB, freed inside the step
            return type("Out", (), {"loss": temporary.sum() * 0 + (x * self.w).sum()})()

    contender = measure.Contender("big", Big(), "", None)
    _, peak = measure.profile_step(contender, {"x": torch.ones(4)}, torch.device("cpu"))
    assert 16 * 2**20 <= peak < 64 * 2**20


@pytest.fixture(scope="module")
def tiny_case():
    profile = lengths.LengthProfile("mix", "test", np.array([8, 20, 32, 32]))
    return run_case(list(measure.MODELS), TINY, profile, batch_size=4, seq_len=32, vocab_size=128, num_batches=2,
                    rounds=2, warmup=1, device=torch.device("cpu"), autocast_dtype=None, peak_flops=1e10,
                    packing=True)


def test_every_model_is_timed_on_the_same_batches(tiny_case):
    assert set(tiny_case["models"]) == set(measure.MODELS) | {"mosaicbert+packing"}
    assert tiny_case["models"]["bert"]["vs_baseline"] == 1.0
    for entry in tiny_case["models"].values():
        step = entry["step_seconds"]
        assert step["min"] <= step["p25"] <= step["median"] <= step["p75"] <= step["max"]
        tokens = tiny_case["real_tokens_per_round"]
        assert entry["tokens_per_second"] == pytest.approx(tokens / (step["median"] * 2))
        assert entry["mfu"] == pytest.approx(entry["flops_per_round"] / (step["median"] * 2) / 1e10)
        assert entry["peak_memory_bytes"] > 0
    # Removing padding and the dense head's unmasked rows: MosaicBERT counts fewer FLOPs than BERT here.
    assert tiny_case["models"]["mosaicbert"]["flops_per_round"] < tiny_case["models"]["bert"]["flops_per_round"]
    json.dumps(tiny_case)


def test_packing_variant_runs_the_same_documents_in_fewer_rows(tiny_case):
    plain, packed = tiny_case["models"]["mosaicbert"], tiny_case["models"]["mosaicbert+packing"]
    assert packed["rows_per_round"] < plain["rows_per_round"] == 2 * 4
    assert packed["flops_per_round"] <= plain["flops_per_round"]  # attention pads per document, not per row
    stats = tiny_case["packing_statistics"]
    assert stats["packed"]["rows_per_batch"] < stats["plain"]["rows_per_batch"] == 4
    assert stats["packed"]["padding_fraction"] < stats["plain"]["padding_fraction"]
    # Masks are drawn per document before packing: the same masked share of real tokens.
    assert stats["packed"]["masked_fraction_of_real"] == pytest.approx(stats["plain"]["masked_fraction_of_real"])


def test_report_renders_every_model_and_the_relative_lines(tiny_case, tmp_path):
    result = {"command": "python benchmarks/throughput.py --preset tiny",
              "environment": {"date": "d", "device": "cpu", "torch": "t", "transformers": "x", "precision": "fp32"},
              "peak_flops": 1e10, "setup": {"preset": "tiny", "dims": TINY, "batch_size": 4, "seq_len": 32},
              "cases": [tiny_case]}
    text = report.render_result(result)
    for key in measure.MODELS:
        assert f"| {report.label(key)} |" in text
    assert "MosaicBERT: " in text and "the non-padding tokens/s of BertForMaskedLM (SDPA)" in text
    assert "| packed |" in text and "| MosaicBERT + packing |" in text
    report.write_bar_chart(result, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000

    stored = tmp_path / "results"
    stored.mkdir()
    (stored / "cpu-tiny.json").write_text(json.dumps(result))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nhand-written\n\n{report.BEGIN}\nSTALE-BLOCK\n{report.END}\n\nmore prose\n")
    assert report.update_docs(doc, [stored / "cpu-tiny.json"])
    new = doc.read_text()
    assert "hand-written" in new and "more prose" in new and "STALE-BLOCK" not in new and "### `cpu-tiny`" in new
    assert not report.update_docs(doc, [stored / "cpu-tiny.json"])


def test_docs_hold_exactly_what_the_stored_results_render():
    """docs/benchmarks.md's generated block is rebuilt from benchmarks/results/*.json, never edited by hand."""
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text()
    block = text[text.index(report.BEGIN): text.index(report.END) + len(report.END)]
    stored = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert stored, "no stored benchmark results"
    assert block == report.render_docs_section(stored, doc.parent), \
        "docs/benchmarks.md differs from the stored results: run `python benchmarks/throughput.py --render-docs`"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), *args], capture_output=True,
                          text=True, env={**os.environ, **env}, cwd=REPO)


@pytest.mark.slow
def test_cli_smoke_writes_table_json_chart_and_profiles(sample_root, tmp_path):
    out = tmp_path / "bench"
    done = run_cli("--preset", "tiny", "--hidden-size", "64", "--lengths", "corpus", "full", "--data-root",
                   str(sample_root), "--batches", "1", "--rounds", "1", "--warmup", "0", "--batch-size", "4",
                   "--seq-len", "32", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [c["lengths"] for c in result["cases"]] == ["corpus", "full"]
    assert result["setup"]["dims"]["hidden_size"] == 64 and result["setup"]["batch_size"] == 4
    assert result["environment"]["malloc_tuning"] is True  # the script re-executed itself with the tunables
    assert (out / "throughput.png").is_file() and (out / "results.md").is_file()
    assert len(list(out.glob("ops-*.txt"))) == 6
    assert "x the non-padding tokens/s of BertForMaskedLM (SDPA)" in done.stdout


@pytest.mark.slow
def test_cli_bad_input_is_one_message(tmp_path):
    done = run_cli("--lengths", "corpus", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "make sample-shards" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("--preset", "huge")
    assert done.returncode == 2 and "invalid choice: 'huge'" in done.stderr


@pytest.mark.slow
def test_cli_seq_lens_keeps_the_tokens_per_batch_and_stops_bert_at_its_positions(tmp_path):
    out = tmp_path / "bench"
    done = run_cli("--preset", "tiny", "--hidden-size", "64", "--seq-lens", "32", "600", "--tokens-per-batch", "1200",
                   "--models", "mosaicbert", "mosaicbert-flex", "bert", "--batches", "1", "--rounds", "1",
                   "--warmup", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    cases = json.loads((out / "results.json").read_text())["cases"]
    assert [(c["seq_len"], c["batch_size"], c["padding_fraction"]) for c in cases] == [(32, 37, 0.0), (600, 2, 0.0)]
    assert list(cases[0]["models"]) == ["mosaicbert", "mosaicbert-flex", "bert"]
    assert list(cases[1]["models"]) == ["mosaicbert", "mosaicbert-flex"]  # BERT's table ends at 512
    flex, mosaic = cases[1]["models"]["mosaicbert-flex"], cases[1]["models"]["mosaicbert"]
    assert flex["mfu"] is not None and flex["flops_per_real_token"] == mosaic["flops_per_real_token"]
    table = (out / "results.md").read_text()
    assert "| 600 | 2 |" in table and table.rstrip().endswith("| not run |")
