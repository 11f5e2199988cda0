"""EarlyBERT pruning on the model: coefficients, folding, head/unit slicing, optimizer state, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mosaicbert.algorithms.earlybert import hamming, head_masks, unit_masks
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
from mosaicbert.model import pruning


def config(**overrides):
    # 12 heads: the ALiBi slopes are not monotone in the head index, which pruning must respect.
    values = dict(vocab_size=64, hidden_size=48, num_hidden_layers=3, num_attention_heads=12, intermediate_size=40,
                  hidden_dropout_prob=0.0, attention_backend="sdpa")
    return MosaicBertConfig(**{**values, **overrides})


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (4, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[3, 5:] = 0
    return ids, mask


def test_coefficients_at_one_leave_outputs_unchanged():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config()).eval()
    ids, mask = batch()
    before = model(ids, mask).logits
    params = pruning.add_coefficients(model)
    assert len(params) == 6 and all(torch.equal(p, torch.ones_like(p)) for p in params)
    assert torch.equal(model(ids, mask).logits, before)


def test_pruning_nothing_is_the_identity():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config()).eval()
    ids, mask = batch()
    before = model(ids, mask).logits
    replaced = pruning.prune(model, [list(range(12))] * 3, [list(range(40))] * 3)
    assert replaced == []
    assert torch.equal(model(ids, mask).logits, before)


def test_zeroed_heads_and_units_pruned_away_leave_outputs_unchanged():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config()).eval()
    pruning.add_coefficients(model)
    heads, units = pruning.coefficients(model)
    dropped_heads = [[0, 8, 11], [2, 3, 9, 10], [5]]  # include heads from both slope families
    dropped_units = [[0, 1, 39], list(range(10, 30)), [7]]
    with torch.no_grad():
        for layer in range(3):
            heads[layer].uniform_(0.5, 1.5)  # non-trivial coefficients, folded exactly
            units[layer].uniform_(0.5, 1.5)
            heads[layer][dropped_heads[layer]] = 0.0
            units[layer][dropped_units[layer]] = 0.0
    ids, mask = batch()
    real = mask.bool()
    masked_outputs = model(ids, mask).logits

    keep_heads = [[h for h in range(12) if h not in d] for d in dropped_heads]
    keep_units = [[u for u in range(40) if u not in d] for d in dropped_units]
    pruning.fold_coefficients(model)
    pruning.prune(model, keep_heads, keep_units)
    assert [layer.attention.num_heads for layer in pruning.layers(model)] == [9, 8, 11]
    assert [layer.mlp.intermediate_size for layer in pruning.layers(model)] == [37, 20, 39]
    assert model.config.head_indices_per_layer[1] == keep_heads[1]
    torch.testing.assert_close(model(ids, mask).logits[real], masked_outputs[real], rtol=1e-5, atol=1e-5)

    # The pruned shape is in the config: a saved model rebuilds with the same widths and outputs.
    reloaded = MosaicBertForMaskedLM(model.config).eval()
    reloaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(reloaded(ids, mask).logits, model(ids, mask).logits)


def test_pruning_twice_keeps_original_head_numbers_and_slopes():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config(num_hidden_layers=1))
    slopes = pruning.layers(model)[0].attention.alibi_slopes.clone()
    pruning.prune(model, [[1, 4, 8, 9, 11]], [list(range(40))])
    pruning.prune(model, [[0, 3, 4]], [list(range(40))])  # positions among the 5 survivors
    assert model.config.head_indices_per_layer == [[1, 9, 11]]
    torch.testing.assert_close(pruning.layers(model)[0].attention.alibi_slopes, slopes[[1, 9, 11]])


def test_optimizer_moments_are_sliced_to_the_kept_rows_and_columns():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config(num_hidden_layers=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, mask = batch()
    labels = torch.where(torch.rand(ids.shape) < 0.5, ids, -100)
    model(ids, mask, labels=labels).loss.backward()
    optimizer.step()
    attn, mlp = pruning.layers(model)[0].attention, pruning.layers(model)[0].mlp
    old_qkv, old_dense, old_gate, old_wo = attn.Wqkv.weight, attn.dense.weight, mlp.gated_layers.weight, mlp.wo.weight
    old_state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in (old_qkv, old_dense, old_gate, old_wo)}
    positions = [i for i, p in enumerate(optimizer.param_groups[0]["params"]) if p is old_qkv]

    replaced = pruning.prune(model, [[2, 7]], [[0, 5, 6]])
    pruning.slice_optimizer_state([optimizer], replaced)

    d = 4
    q_rows = [2 * d + i for i in range(d)] + [7 * d + i for i in range(d)]
    qkv_rows = q_rows + [48 + r for r in q_rows] + [96 + r for r in q_rows]
    new_qkv = attn.Wqkv.weight
    assert optimizer.param_groups[0]["params"][positions[0]] is new_qkv
    torch.testing.assert_close(optimizer.state[new_qkv]["exp_avg"], old_state[old_qkv]["exp_avg"][qkv_rows])
    torch.testing.assert_close(optimizer.state[new_qkv]["exp_avg_sq"], old_state[old_qkv]["exp_avg_sq"][qkv_rows])
    assert optimizer.state[new_qkv]["step"] == old_state[old_qkv]["step"]
    torch.testing.assert_close(optimizer.state[attn.dense.weight]["exp_avg"], old_state[old_dense]["exp_avg"][:, q_rows])
    gate_rows = [0, 5, 6, 40, 45, 46]  # each unit's gate row and its value row I + j
    torch.testing.assert_close(optimizer.state[mlp.gated_layers.weight]["exp_avg"], old_state[old_gate]["exp_avg"][gate_rows])
    torch.testing.assert_close(optimizer.state[mlp.wo.weight]["exp_avg_sq"], old_state[old_wo]["exp_avg_sq"][:, [0, 5, 6]])
    assert old_qkv not in optimizer.state
    model(ids, mask, labels=labels).loss.backward()
    optimizer.step()  # the sliced state fits the new shapes


def test_head_masks_remove_exactly_k_per_layer_by_magnitude():
    coefs = [torch.tensor([1.0, -0.1, 0.5, 0.2, -2.0, 0.3]), torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])]
    masks = head_masks(coefs, 1 / 3, min_heads=1)
    assert masks[0].tolist() == [True, False, True, False, True, True]  # |-0.1| and |0.2| are smallest
    assert masks[1].tolist() == [True, True, True, True, False, False]
    assert head_masks([torch.ones(2)], 0.9, min_heads=1)[0].sum() == 1  # the floor


def test_unit_masks_are_global_with_floors_and_rounding():
    coefs = [torch.full((8,), 0.1), torch.arange(1.0, 9.0)]  # layer 0 holds all the smallest values
    masks = unit_masks(coefs, prune_ratio=0.5, min_units=2)
    assert masks[0].sum() == 2  # floor: it would otherwise lose all 8
    assert masks[1].sum() == 6 and masks[1].tolist()[:2] == [False, False]
    rounded = unit_masks(coefs, prune_ratio=0.5, min_units=2, round_to=4)
    assert [m.sum() for m in rounded] == [4, 8]


def test_hamming_distance():
    assert hamming(np.array([1, 0, 1, 1], bool), np.array([1, 1, 1, 0], bool)) == 0.5


def test_search_setup_adds_undecayed_coefficients_and_the_l1_penalty(tmp_path):
    from types import SimpleNamespace

    from mosaicbert.algorithms.earlybert import EarlyBERT
    from mosaicbert.model.composer import ComposerMosaicBert

    torch.manual_seed(0)
    composer_model = ComposerMosaicBert(MosaicBertForMaskedLM(config()))
    optimizer = torch.optim.AdamW(composer_model.parameters(), lr=1e-3, weight_decay=0.1)
    state = SimpleNamespace(model=composer_model, optimizers=[optimizer], loss=torch.tensor(2.0))
    algorithm = EarlyBERT(run_folder=str(tmp_path), l1_heads=1e-3, l1_units=1e-2)
    algorithm._init(state)
    group = optimizer.param_groups[-1]
    assert group["weight_decay"] == 0.0 and len(group["params"]) == 6
    assert all(p.requires_grad for p in group["params"])

    algorithm._add_penalty(state, logger=None)
    expected = 2.0 + 1e-3 * 3 * 12 + 1e-2 * 3 * 40  # all coefficients are 1
    assert state.loss.item() == pytest.approx(expected)
    state.loss.backward()
    heads, units = pruning.coefficients(composer_model.model)
    torch.testing.assert_close(heads[0].grad, torch.full((12,), 1e-3))  # lambda * sign(c)
    torch.testing.assert_close(units[2].grad, torch.full((40,), 1e-2))


def test_algorithm_rejects_unknown_mode_and_rewind_without_ticket(tmp_path):
    from mosaicbert.algorithms.earlybert import EarlyBERT
    from mosaicbert.errors import ConfigError

    with pytest.raises(ConfigError, match="mode must be one of in_run, two_phase"):
        EarlyBERT(run_folder=str(tmp_path), mode="later")
    with pytest.raises(ConfigError, match="rewind needs ticket"):
        EarlyBERT(run_folder=str(tmp_path), rewind=True)
    EarlyBERT(run_folder=str(tmp_path), mode="two_phase", rewind=True)  # applies to the second phase


def quiet_logger():
    from types import SimpleNamespace

    return SimpleNamespace(log_metrics=lambda *args, **kwargs: None)


def test_ticket_is_drawn_once_window_masks_agree_after_min_steps(tmp_path):
    from mosaicbert.algorithms.earlybert import EarlyBERT

    model = MosaicBertForMaskedLM(config())
    pruning.add_coefficients(model)
    heads, units = pruning.coefficients(model)
    algorithm = EarlyBERT(run_folder=str(tmp_path), window=3, check_interval=10, min_search_steps=40,
                          max_search_steps=1000, min_units_per_layer=4)
    decisions = {step: algorithm._decide(step, heads, units, quiet_logger()) for step in (10, 20, 30)}
    assert all(d is None for d in decisions.values())  # 30: stable, but before min_search_steps
    drawn = algorithm._decide(40, heads, units, quiet_logger())
    assert drawn is not None and drawn["reason"] == "masks stable"
    with torch.no_grad():  # a mask that moves keeps the search going, until the cap
        units[0].fill_(2.0)  # the pruned units move from layer 0 to layer 1
    assert algorithm._decide(50, heads, units, quiet_logger()) is None
    assert algorithm._decide(1000, heads, units, quiet_logger())["reason"] == "max_search_steps"


def test_search_state_survives_a_checkpoint(tmp_path):
    from mosaicbert.algorithms.earlybert import EarlyBERT

    model = MosaicBertForMaskedLM(config())
    pruning.add_coefficients(model)
    heads, units = pruning.coefficients(model)
    first = EarlyBERT(run_folder=str(tmp_path), window=3, min_units_per_layer=4)
    for step in (10, 20):
        first._decide(step, heads, units, quiet_logger())
    second = EarlyBERT(run_folder=str(tmp_path), window=3, min_units_per_layer=4)
    second.load_state_dict(first.state_dict())
    assert second.history == first.history and len(second.recent) == 2
    for a, b in zip(first.recent, second.recent):
        assert np.array_equal(a["units"], b["units"]) and np.array_equal(a["heads"], b["heads"])


def test_floors_below_one_are_refused(tmp_path):
    from mosaicbert.algorithms.earlybert import EarlyBERT
    from mosaicbert.errors import ConfigError

    with pytest.raises(ConfigError, match="must be >= 1"):
        EarlyBERT(run_folder=str(tmp_path), min_heads_per_layer=0)


def test_folding_rescales_adam_moments():
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(config(num_hidden_layers=1))
    pruning.add_coefficients(model)
    mlp = pruning.layers(model)[0].mlp
    with torch.no_grad():
        mlp.unit_coef.uniform_(0.5, 2.0)
    coef = mlp.unit_coef.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, mask = batch()
    model(ids, mask, labels=torch.where(torch.rand(ids.shape) < 0.5, ids, -100)).loss.backward()
    optimizer.step()
    old = mlp.wo.weight
    before = {k: v.clone() for k, v in optimizer.state[old].items()}
    pruning.slice_optimizer_state([optimizer], pruning.fold_coefficients(model))
    after = optimizer.state[mlp.wo.weight]
    torch.testing.assert_close(after["exp_avg"], before["exp_avg"] / coef[None, :])
    torch.testing.assert_close(after["exp_avg_sq"], before["exp_avg_sq"] / coef[None, :] ** 2)


def test_classifier_from_a_mid_search_checkpoint_keeps_the_coefficients_effect(tmp_path):
    from mosaicbert.model.loading import load_classifier

    torch.manual_seed(0)
    mlm = MosaicBertForMaskedLM(config()).eval()
    pruning.add_coefficients(mlm)
    with torch.no_grad():
        for coef in sum(pruning.coefficients(mlm), []):
            coef.uniform_(0.5, 1.5)
    torch.save({"state": {"model": {f"model.{k}": v for k, v in mlm.state_dict().items()}}}, tmp_path / "ep0-ba5-rank0.pt")
    config().to_json_file(tmp_path / "model_config.json")
    classifier = load_classifier(str(tmp_path / "ep0-ba5-rank0.pt"), "mosaic_bert", 2).eval()
    ids, mask = batch()
    real = mask.bool()
    torch.testing.assert_close(classifier.bert(ids, mask).last_hidden_state[real], mlm.bert(ids, mask).last_hidden_state[real],
                               rtol=1e-5, atol=1e-5)
