"""EarlyBERT in GLUE jobs: the `earlybert` section of a GLUE config and how a job trains around it.

A job first searches (coefficients + L1, `mode: two_phase`) at the task's learning rate held
constant: no warm-up, because in a warm-up the coefficients barely move (at MNLI by at most
about 7e-4) and their ranking is noise. The search is at most `max_search_fraction` of an epoch
of the task (`check_fraction`, `min_search_fraction` likewise; or the algorithm's step counts).
At the draw the search stops, and the ticket trains afresh with its own schedule: `retrain_lr`
with a 6% linear warm-up and linear decay over `retrain_epochs` (the reference searches at 2e-5
and retrains at 4e-5 for 2 epochs), from the search-start weights with `rewind: true`, else from
the searched ones.

Round 2 of the paper protocol (RTE, MRPC, STS-B from the fine-tuned MNLI model) does not search:
the MNLI model is MNLI's ticket, already pruned, and those jobs train it with the ticket's
schedule (`Job.earlybert_ticket`). A search on an already pruned model is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mosaicbert.errors import ConfigError, UserError

# A search length in epochs of the task -> the algorithm's argument in steps.
FRACTIONS = {"check_fraction": "check_interval", "min_search_fraction": "min_search_steps",
             "max_search_fraction": "max_search_steps"}
GLUE_KEYS = ("retrain_lr", "retrain_epochs", *FRACTIONS)  # the section's keys that are not the algorithm's


@dataclass
class GlueEarlyBERT:
    algorithm: dict[str, Any]  # arguments of the EarlyBERT algorithm, step counts as given
    retrain_lr: float | None = None  # None: the task's lr
    retrain_epochs: int | None = None  # None: the task's epochs
    fractions: dict[str, float] = field(default_factory=dict)  # FRACTIONS keys that were set

    def algorithm_arguments(self, steps_per_epoch: int) -> dict[str, Any]:
        args = dict(self.algorithm)
        for fraction, steps in FRACTIONS.items():
            if fraction in self.fractions:
                args[steps] = max(1, round(self.fractions[fraction] * steps_per_epoch))
        return args


def parse_settings(section: dict[str, Any]) -> GlueEarlyBERT:
    """Split a GLUE config's `earlybert` section into the algorithm's arguments and the job's own
    settings; contradictory or meaningless settings raise ConfigError."""
    algorithm = dict(section)
    if "ticket" in algorithm:
        raise ConfigError("earlybert.ticket: every GLUE job draws its own ticket (round 2 trains MNLI's); remove it.")
    if algorithm.setdefault("mode", "two_phase") != "two_phase":
        raise ConfigError(
            f"earlybert.mode={algorithm['mode']}: GLUE jobs run two_phase, a search at a constant learning rate and "
            "then the ticket with its own schedule (retrain_lr, retrain_epochs); in_run would search inside the "
            "warm-up of one schedule. To train the searched weights instead of the search-start ones, set rewind: false."
        )
    fractions = {}
    for fraction, steps in FRACTIONS.items():
        if fraction not in algorithm:
            continue
        if steps in algorithm:
            raise ConfigError(f"earlybert: set {fraction} (a fraction of an epoch) or {steps} (steps), not both.")
        fractions[fraction] = _positive(algorithm.pop(fraction), f"earlybert.{fraction}", "a fraction of an epoch")
    low, high = fractions.get("min_search_fraction"), fractions.get("max_search_fraction")
    if low is not None and high is not None and low > high:
        # Every ticket would come from the cap, and the early-bird rule would never be asked.
        raise ConfigError(f"earlybert.min_search_fraction={low:g} is above max_search_fraction={high:g}: "
                          "the search would always stop at the cap. Lower the first or raise the second.")
    retrain_lr = algorithm.pop("retrain_lr", None)
    retrain_epochs = algorithm.pop("retrain_epochs", None)
    if retrain_lr is not None:
        retrain_lr = _positive(retrain_lr, "earlybert.retrain_lr", "a learning rate")
    if retrain_epochs is not None and (not isinstance(retrain_epochs, int) or isinstance(retrain_epochs, bool)
                                       or retrain_epochs < 1):
        raise ConfigError(f"earlybert.retrain_epochs must be a whole number of epochs >= 1, got {retrain_epochs!r}.")
    return GlueEarlyBERT(algorithm, retrain_lr, retrain_epochs, fractions)


def _positive(value: Any, where: str, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not number > 0:
        raise ConfigError(f"{where} must be a number > 0 ({what}), got {value!r}.")
    return number


# A job's `fit(model, lr, max_duration, schedule, algorithms)`, schedule "constant" or "warmup_decay"
# (6% linear warm-up, then linear decay to 0).
Fit = Callable[..., None]


def train(job, model, fit: Fit, reload: Callable[[], Any], steps_per_epoch: int) -> tuple[Any, dict[str, Any]]:
    """Search then train the ticket, or (round 2) train the ticket `job.start` already is.
    Returns the trained model and what was done, for the job's result."""
    from composer.utils import reproducibility

    from mosaicbert.algorithms.earlybert import EarlyBERT

    settings = parse_settings(job.earlybert)
    retrain = {"lr": job.lr if settings.retrain_lr is None else settings.retrain_lr,
               "epochs": job.epochs if settings.retrain_epochs is None else settings.retrain_epochs,
               "schedule": "warmup_decay"}
    if job.earlybert_ticket is not None:
        if not os.path.isfile(job.earlybert_ticket):
            raise UserError(f"this job trains the EarlyBERT ticket of {job.start}, but {job.earlybert_ticket} does not "
                            "exist: that model was fine-tuned without earlybert (an earlier run in this run folder?). "
                            "Use a new run_name so MNLI runs with earlybert first.")
        with open(job.earlybert_ticket, encoding="utf-8") as f:
            ticket = json.load(f)
        fit(model, retrain["lr"], f"{retrain['epochs']}ep", "warmup_decay")
        return model, {"ticket": job.earlybert_ticket, "ticket_from": job.start, "draw_step": ticket["step"],
                       "draw_reason": ticket["reason"], "search": None, "retrain": retrain}

    args = settings.algorithm_arguments(steps_per_epoch)
    search = EarlyBERT(run_folder=job.earlybert_folder, **args)
    fit(model, job.lr, f"{search.max_search_steps}ba", "constant", [search])  # ends at the draw
    # As the paper fine-tunes: a fresh model of the ticket's widths, the same seed, a fresh optimizer.
    reproducibility.seed_all(job.seed)
    ticket_path = os.path.join(job.earlybert_folder, "ticket.json")
    model = reload()
    fit(model, retrain["lr"], f"{retrain['epochs']}ep", "warmup_decay", [EarlyBERT(run_folder=job.earlybert_folder,
                                                                                   **args, ticket=ticket_path)])
    search_report = {"lr": job.lr, "schedule": "constant", "steps_per_epoch": steps_per_epoch,
                     **{key: getattr(search, key) for key in FRACTIONS.values()}}
    return model, {"ticket": ticket_path, "ticket_from": "search-start weights" if args.get("rewind") else "searched weights",
                   "draw_step": search.drawn["step"], "draw_reason": search.drawn["reason"],
                   "search": search_report, "retrain": retrain}
