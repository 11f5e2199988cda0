"""EarlyBERT (arXiv 2101.00063) as a Composer algorithm for MosaicBERT.

Search: every attention head and GeGLU unit gets a learnable coefficient (1.0 at the start,
no weight decay) and the training loss gets an L1 penalty on them. Every `check_interval`
steps the coefficients give masks: per layer the `head_prune_ratio` smallest |c| heads go,
globally the `unit_prune_ratio` smallest |c| units go, with per-layer floors. The ticket is
drawn when the newest mask is within `epsilon` (normalised Hamming distance) of each of the
previous `window - 1` masks, for heads and for units, after `min_search_steps`, or at
`max_search_steps`. Rank 0 decides and broadcasts, so every rank prunes alike.

Then, `mode: in_run`: fold the coefficients into the weights, cut the pruned rows and
columns, slice the optimizer moments, re-wrap DDP, and train the smaller model in the same
run. `mode: two_phase`: write the ticket and the weights and stop; a second run with
`ticket: <run>/ticket.json` builds the pruned model from the searched weights or, with
`rewind: true`, from the weights the search started from, and trains it afresh.

Reports in the run folder: `ticket.json` (draw step, kept heads and units per layer,
distance history, timings) and `earlybert_masks.png` (pairwise mask distances).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from typing import Any

import numpy as np
import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from composer.utils import dist

from mosaicbert.errors import ConfigError
from mosaicbert.model import pruning

log = logging.getLogger(__name__)
MODES = ("in_run", "two_phase")
SEARCH_START_WEIGHTS = "earlybert_search_start.pt"
SEARCHED_WEIGHTS = "earlybert_searched.pt"


# --------------------------------------------------------------------------- masks


def head_masks(head_coefs: list[torch.Tensor], prune_ratio: float, min_heads: int) -> list[np.ndarray]:
    """Per layer, True for kept heads: the round(ratio * n) smallest |c| go, at least `min_heads` stay."""
    masks = []
    for coef in head_coefs:
        values = coef.detach().abs().float().cpu().numpy()
        n = len(values)
        remove = min(int(round(prune_ratio * n)), max(n - min_heads, 0))
        order = np.argsort(values, kind="stable")
        keep = np.ones(n, dtype=bool)
        keep[order[:remove]] = False
        masks.append(keep)
    return masks


def unit_masks(unit_coefs: list[torch.Tensor], prune_ratio: float, min_units: int, round_to: int = 1) -> list[np.ndarray]:
    """True for kept units. The round(ratio * total) smallest |c| over all layers go, but no layer keeps
    fewer than `min_units`; with `round_to`, each layer's kept count is rounded up to a multiple of it."""
    values = [c.detach().abs().float().cpu().numpy() for c in unit_coefs]
    sizes = [len(v) for v in values]
    total_remove = int(round(prune_ratio * sum(sizes)))
    flat = np.concatenate(values)
    layer_of = np.repeat(np.arange(len(sizes)), sizes)
    offsets = np.cumsum([0] + sizes[:-1])
    removable = [max(size - min(min_units, size), 0) for size in sizes]
    keep = np.ones(len(flat), dtype=bool)
    removed = [0] * len(sizes)
    count = 0
    for index in np.argsort(flat, kind="stable"):
        if count == total_remove:
            break
        layer = layer_of[index]
        if removed[layer] < removable[layer]:
            keep[index] = False
            removed[layer] += 1
            count += 1
    masks = [keep[o:o + s].copy() for o, s in zip(offsets, sizes)]
    if round_to > 1:
        for mask, vals in zip(masks, values):
            kept = int(mask.sum())
            target = min(-(-kept // round_to) * round_to, len(mask))
            order = np.argsort(-vals, kind="stable")  # restore the largest |c| among the removed first
            for index in order:
                if int(mask.sum()) >= target:
                    break
                mask[index] = True
    return masks


def hamming(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised Hamming distance of two masks of the same length."""
    return float(np.mean(a != b))


def refuse_search_on_pruned(config, what: str) -> None:
    """A search ranks the units a model has; on a ticket it would cut a second ticket out of the first
    (12 heads -> 8 -> 5) and `rewind` would return to pruned weights, not to the search's start."""
    widths = pruning.describe_pruning(config)
    if widths is not None:
        raise ConfigError(
            f"EarlyBERT cannot search {what}: it is already structurally pruned ({widths}), so a new search "
            "would prune it a second time. Start the search from an unpruned checkpoint, or train this pruned "
            "model without the earlybert section (it keeps its widths)."
        )


# --------------------------------------------------------------------------- algorithm


class EarlyBERT(Algorithm):
    def __init__(
        self,
        run_folder: str,
        mode: str = "in_run",
        head_prune_ratio: float = 1 / 3,
        unit_prune_ratio: float = 0.3,
        l1_heads: float = 1e-4,
        l1_units: float = 1e-4,
        check_interval: int = 10,
        window: int = 5,
        epsilon: float = 0.1,
        min_search_steps: int = 100,
        max_search_steps: int = 400,
        min_heads_per_layer: int = 1,
        min_units_per_layer: int = 64,
        round_units_to: int = 1,
        ticket: str | None = None,
        rewind: bool = False,
    ):
        if mode not in MODES:
            raise ConfigError(f"algorithms.earlybert.mode must be one of {', '.join(MODES)}, got '{mode}'.")
        if not 0 <= head_prune_ratio < 1 or not 0 <= unit_prune_ratio < 1:
            raise ConfigError("algorithms.earlybert: prune ratios must lie in [0, 1).")
        if window < 2 or check_interval < 1:
            raise ConfigError("algorithms.earlybert: window must be >= 2 and check_interval >= 1.")
        if min_heads_per_layer < 1 or min_units_per_layer < 1:
            raise ConfigError("algorithms.earlybert: min_heads_per_layer and min_units_per_layer must be >= 1; "
                              "a layer without heads or units cannot run.")
        if rewind and ticket is None and mode != "two_phase":
            raise ConfigError("algorithms.earlybert.rewind needs ticket (the ticket.json of a two_phase search run) "
                              "or mode: two_phase.")
        self.run_folder = run_folder
        self.mode = mode
        self.head_prune_ratio = head_prune_ratio
        self.unit_prune_ratio = unit_prune_ratio
        self.l1_heads = l1_heads
        self.l1_units = l1_units
        self.check_interval = check_interval
        self.window = window
        self.epsilon = epsilon
        self.min_search_steps = min_search_steps
        self.max_search_steps = max_search_steps
        self.min_heads_per_layer = min_heads_per_layer
        self.min_units_per_layer = min_units_per_layer
        self.round_units_to = round_units_to
        self.ticket = ticket
        self.rewind = rewind

        self.searching = ticket is None
        self.coefficients: list[torch.nn.Parameter] = []
        self.recent: deque = deque(maxlen=window - 1)  # the masks the newest one is compared with
        self.history: list[dict[str, Any]] = []  # every check: step, masks, distances
        self.drawn: dict[str, Any] | None = None
        self._fit_start = None
        self._start_batch = 0
        self._draw_time = None
        self._pruned_by_checkpoint = False

    # Composer plumbing ------------------------------------------------------
    def match(self, event: Event, state: State) -> bool:
        if event in (Event.INIT, Event.AFTER_LOAD, Event.FIT_START, Event.FIT_END):
            return True
        return self.searching and event in (Event.AFTER_LOSS, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self._init(state)
        elif event == Event.AFTER_LOAD:
            self._check_loaded_model(state)
        elif event == Event.FIT_START:
            self._fit_start = time.perf_counter()
            self._start_batch = int(state.timestamp.batch)
            if self.searching and self.mode == "two_phase" and int(state.timestamp.batch) == 0:
                self._save_weights(state, SEARCH_START_WEIGHTS)
        elif event == Event.AFTER_LOSS:
            self._add_penalty(state, logger)
        elif event == Event.BATCH_END:
            self._check(state, logger)
        elif event == Event.FIT_END:
            self._finish(state)

    def state_dict(self) -> dict[str, Any]:
        recent = [{kind: (np.packbits(m[kind]).tolist(), len(m[kind])) for kind in ("heads", "units")} for m in self.recent]
        return {"searching": self.searching, "drawn": self.drawn, "history": self.history, "recent": recent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Composer restores this after the model, so a resumed search keeps its window and history."""
        self.searching = state["searching"] and self.searching
        self.drawn = state["drawn"] or self.drawn
        self.history = state["history"]
        self.recent.clear()
        for masks in state.get("recent", []):
            self.recent.append({kind: np.unpackbits(np.array(bits, dtype=np.uint8), count=n).astype(bool)
                                for kind, (bits, n) in masks.items()})

    # INIT ---------------------------------------------------------------------
    def _init(self, state: State) -> None:
        composer_model = _unwrap(state.model)
        model = composer_model.model
        if not hasattr(model, "bert") or not hasattr(pruning.layers(model)[0].attention, "Wqkv"):
            raise ConfigError("algorithms.earlybert works on model.name=mosaic_bert only.")
        composer_model.reshape_hooks.append(lambda replaced: self._on_reshape(state, replaced))
        if self.ticket is not None:
            self._build_from_ticket(state, model)
            return
        refuse_search_on_pruned(model.config, "this model")
        self.coefficients = pruning.add_coefficients(model)
        for optimizer in state.optimizers:
            lr = optimizer.param_groups[0]["lr"]
            # Their own group: no weight decay, and Composer's schedulers still scale them (added before they compile).
            optimizer.add_param_group({"params": self.coefficients, "weight_decay": 0.0, "lr": lr, "initial_lr": lr})

    def _check_loaded_model(self, state: State) -> None:
        """A loaded checkpoint that reshaped the model is this search's own pruned continuation only if
        its EarlyBERT state records the draw (autoresume); otherwise (load_weights_only, or another run's
        pruned checkpoint) the search would silently not happen: refuse instead."""
        if self._pruned_by_checkpoint and self.ticket is None and self.drawn is None:
            refuse_search_on_pruned(_unwrap(state.model).model.config, f"the checkpoint loaded from {state.load_path}")

    def _build_from_ticket(self, state: State, model) -> None:
        with open(self.ticket, encoding="utf-8") as f:
            ticket = json.load(f)
        folder = os.path.dirname(self.ticket)
        weights = os.path.join(folder, SEARCH_START_WEIGHTS if self.rewind else SEARCHED_WEIGHTS)
        saved = torch.load(weights, map_location="cpu", weights_only=True)
        pruning.add_coefficients(model)  # both weight files hold coefficients (1.0 at the search start)
        model.load_state_dict(saved)
        replaced = pruning.fold_coefficients(model)
        replaced += pruning.prune(model, ticket["kept_heads"], ticket["kept_units"])
        pruning.slice_optimizer_state(state.optimizers, replaced)
        self.drawn = ticket
        log.info("EarlyBERT: built the pruned model of %s from the %s weights", self.ticket,
                 "search-start" if self.rewind else "searched")

    # search -------------------------------------------------------------------
    def _add_penalty(self, state: State, logger: Logger) -> None:
        heads, units = pruning.coefficients(_unwrap(state.model).model)
        penalty = self.l1_heads * sum(c.abs().sum() for c in heads) + self.l1_units * sum(c.abs().sum() for c in units)
        if isinstance(state.loss, dict):
            key = "total" if "total" in state.loss else "earlybert_l1"
            state.loss[key] = state.loss.get(key, 0) + penalty
        elif isinstance(state.loss, (tuple, list)):
            state.loss = type(state.loss)([*state.loss, penalty])
        else:
            state.loss = state.loss + penalty

    def _check(self, state: State, logger: Logger) -> None:
        step = int(state.timestamp.batch)
        if step % self.check_interval and step < self.max_search_steps:
            return
        model = _unwrap(state.model).model
        heads, units = pruning.coefficients(model)
        decision = [None]
        if dist.get_global_rank() == 0:
            decision[0] = self._decide(step, heads, units, logger)
        dist.broadcast_object_list(decision, src=0)
        if decision[0] is not None:
            self._draw(state, decision[0])

    def _decide(self, step: int, heads, units, logger: Logger) -> dict[str, Any] | None:
        per_layer_heads = head_masks(heads, self.head_prune_ratio, self.min_heads_per_layer)
        head_mask = np.concatenate(per_layer_heads)
        per_layer_units = unit_masks(units, self.unit_prune_ratio, self.min_units_per_layer, self.round_units_to)
        unit_mask = np.concatenate(per_layer_units)
        head_distances = [hamming(head_mask, old["heads"]) for old in self.recent]
        unit_distances = [hamming(unit_mask, old["units"]) for old in self.recent]
        self.recent.append({"heads": head_mask, "units": unit_mask})
        self.history.append({"step": step, "heads": np.packbits(head_mask).tolist(), "units": np.packbits(unit_mask).tolist(),
                             "sizes": [len(head_mask), len(unit_mask)],
                             "head_distance": max(head_distances, default=None), "unit_distance": max(unit_distances, default=None)})
        spread = float(torch.cat([c.detach().flatten() for c in heads + units]).std())
        logger.log_metrics({"earlybert/head_mask_distance": max(head_distances, default=1.0),
                            "earlybert/unit_mask_distance": max(unit_distances, default=1.0),
                            "earlybert/coefficient_std": spread})
        stable = (len(head_distances) == self.window - 1 and max(head_distances) <= self.epsilon
                  and max(unit_distances) <= self.epsilon)
        if not ((stable and step >= self.min_search_steps) or step >= self.max_search_steps):
            return None
        return {
            "step": step,
            "reason": "masks stable" if stable and step >= self.min_search_steps else "max_search_steps",
            "kept_heads": [np.flatnonzero(m).tolist() for m in per_layer_heads],
            "kept_units": [np.flatnonzero(m).tolist() for m in per_layer_units],
        }

    def _draw(self, state: State, decision: dict[str, Any]) -> None:
        self.searching = False
        self._draw_time = time.perf_counter()
        composer_model = _unwrap(state.model)
        model = composer_model.model
        config = model.config
        decision["kept_heads_original"] = [
            [config.layer_head_indices(i)[h] for h in kept] for i, kept in enumerate(decision["kept_heads"])
        ]
        self.drawn = decision
        log.info("EarlyBERT: ticket drawn at step %d (%s)", decision["step"], decision["reason"])
        if self.mode == "two_phase":
            self._save_weights(state, SEARCHED_WEIGHTS)
            self._write_reports(state)
            state.stop_training()
            return
        replaced = pruning.fold_coefficients(model)
        pruning.drop_from_optimizer(state.optimizers, self.coefficients)
        replaced += pruning.prune(model, decision["kept_heads"], decision["kept_units"])
        pruning.slice_optimizer_state(state.optimizers, replaced)
        self.coefficients = []
        _rewrap_ddp(state)
        self._write_reports(state)

    def _on_reshape(self, state: State, replaced: list) -> None:
        """A checkpoint of the already-pruned model is being loaded: the search is over."""
        model = _unwrap(state.model).model
        current = []
        for layer in pruning.layers(model):
            current += [p for p in (layer.attention.head_coef, layer.mlp.unit_coef) if p is not None]
            layer.attention.head_coef = None
            layer.mlp.unit_coef = None
        # Idempotent: a no-op where the trainer's own reshape hook already moved the optimizer over.
        pruning.slice_optimizer_state(state.optimizers, replaced)
        pruning.drop_from_optimizer(state.optimizers, current + self.coefficients)
        self.coefficients = []
        self.searching = False
        self._pruned_by_checkpoint = True  # the draw, if any, comes with the checkpoint's EarlyBERT state

    # reports ------------------------------------------------------------------
    def _save_weights(self, state: State, name: str) -> None:
        if dist.get_global_rank() == 0:
            os.makedirs(self.run_folder, exist_ok=True)
            path = os.path.join(self.run_folder, name)
            weights = {k: v.detach().cpu() for k, v in _unwrap(state.model).model.state_dict().items()}
            torch.save(weights, path + ".partial")
            os.replace(path + ".partial", path)
        dist.barrier()

    def _write_reports(self, state: State) -> None:
        if dist.get_global_rank() != 0 or self.drawn is None:
            return
        os.makedirs(self.run_folder, exist_ok=True)
        search_seconds = (self._draw_time - self._fit_start) if self._draw_time and self._fit_start else None
        ticket = {
            **self.drawn,
            "mode": self.mode,
            "settings": {k: getattr(self, k) for k in (
                "head_prune_ratio", "unit_prune_ratio", "l1_heads", "l1_units", "check_interval", "window", "epsilon",
                "min_search_steps", "max_search_steps", "min_heads_per_layer", "min_units_per_layer", "round_units_to")},
            "history": [{k: h[k] for k in ("step", "head_distance", "unit_distance")} for h in self.history],
            "search_seconds": search_seconds,
        }
        _write_json(os.path.join(self.run_folder, "ticket.json"), ticket)
        plot_mask_distances(self.history, os.path.join(self.run_folder, "earlybert_masks.png"))

    def _finish(self, state: State) -> None:
        sums = [float(sum(p.detach().double().sum() for p in _unwrap(state.model).parameters()))]
        checksums = dist.all_gather_object(sums[0])
        if dist.get_global_rank() != 0:
            return
        now = time.perf_counter()
        path = os.path.join(self.run_folder, "earlybert_report.json")
        report = {"segments": []}
        # A resumed run, or the second phase in the same folder, adds to what came before.
        if os.path.isfile(path) and (self._start_batch > 0 or self.ticket is not None):
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        report["segments"].append({
            "end_batch": int(state.timestamp.batch),
            "search_seconds": (self._draw_time - self._fit_start) if self._draw_time else None,
            "pruned_seconds": (now - self._draw_time) if self._draw_time else None,
            "seconds": now - self._fit_start if self._fit_start else None,
            "parameters": sum(p.numel() for p in _unwrap(state.model).model.parameters()),
            "rank_parameter_checksums": checksums,
        })
        report.update(drawn=self.drawn is not None, draw_step=self.drawn["step"] if self.drawn else None,
                      total_seconds=sum(s["seconds"] or 0 for s in report["segments"]))
        _write_json(path, report)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _rewrap_ddp(state: State) -> None:
    """DDP hooks the parameters it was built with; after surgery it must be rebuilt or ranks drift apart."""
    if dist.get_world_size() > 1 and hasattr(state.model, "module"):
        from composer.distributed import prepare_ddp_module

        state.model = prepare_ddp_module(state.model.module, find_unused_parameters=False)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    with open(path + ".partial", "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    os.replace(path + ".partial", path)


def plot_mask_distances(history: list[dict[str, Any]], path: str) -> None:
    """Heatmaps of the normalised Hamming distance between every pair of masks of the search."""
    if len(history) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for column, (ax, kind) in enumerate(zip(axes, ("heads", "units"))):
        masks = [np.unpackbits(np.array(h[kind], dtype=np.uint8), count=h["sizes"][column]).astype(bool) for h in history]
        matrix = np.array([[hamming(a, b) for b in masks] for a in masks])
        image = ax.imshow(matrix, cmap="viridis", origin="lower", vmin=0, vmax=max(matrix.max(), 1e-6))
        ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).astype(int)
        ax.set_xticks(ticks, [steps[i] for i in ticks])
        ax.set_yticks(ticks, [steps[i] for i in ticks])
        ax.set_xlabel("step")
        ax.set_ylabel("step")
        ax.set_title(f"{kind} mask distance")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
