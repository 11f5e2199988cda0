"""MLM pretraining: a validated config in, a Composer Trainer run out.

    composer src/main.py yamls/demo.yaml [key=value ...]
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from typing import Any

from omegaconf import OmegaConf

from mosaicbert.config import TrainConfig, describe_defaults, load_config, to_dict
from mosaicbert.errors import UserError, entry_point

log = logging.getLogger("mosaicbert")
MODEL_CONFIG_FILE = "model_config.json"


def check_save_folder(config: TrainConfig) -> None:
    """Refuse to start a fresh run on top of another run's checkpoints (Composer would fail later, less clearly)."""
    if config.save_folder is None or config.autoresume or config.save_overwrite or not os.path.isdir(config.save_folder):
        return
    existing = sorted(f for f in os.listdir(config.save_folder) if f.endswith(".pt") and not f.startswith("."))
    if existing:
        raise UserError(
            f"save_folder {config.save_folder} already holds checkpoints ({', '.join(existing[:3])}). "
            "Set autoresume=true to continue that run, choose another run_name or save_folder, "
            "or set save_overwrite=true to replace them."
        )


def write_model_config(config: TrainConfig, composer_model) -> None:
    """The architecture next to the checkpoints, so fine-tuning can rebuild it from a checkpoint path
    alone. Written again at the end of training: structured pruning may have changed the widths."""
    from composer.utils import dist

    if config.save_folder is not None and dist.get_global_rank() == 0:
        os.makedirs(config.save_folder, exist_ok=True)
        composer_model.model.config.to_json_file(os.path.join(config.save_folder, MODEL_CONFIG_FILE))


def prepare_run(config: TrainConfig) -> None:
    """Checks and clean-up before anything is built: the registry entries, the save folder, the data's splits,
    Composer's patches, partial checkpoint writes and stale shared memory of killed runs; then the seeds."""
    from composer.utils import dist, reproducibility

    from mosaicbert import composer_patches
    from mosaicbert.builders import validate_entries
    from mosaicbert.checkpointing import remove_partial_writes
    from mosaicbert.data.shared_memory import remove_stale_streaming_files
    from mosaicbert.data.text_dataset import check_local_split

    validate_entries(config)
    check_save_folder(config)
    # Composer warns whenever a last, smaller evaluation batch is not split into microbatches; that is expected.
    warnings.filterwarnings("ignore", message="Cannot split tensor of length")
    for loader in (config.train_loader, config.eval_loader):  # before the tokenizer, which may need the hub
        if loader is not None and loader.remote is None:
            check_local_split(loader.local, loader.split)
    composer_patches.apply()
    if dist.get_global_rank() == 0:
        for name in remove_partial_writes(config.save_folder):
            log.warning("removed %s from %s: a checkpoint write cut short by a killed run", name, config.save_folder)
    reproducibility.seed_all(config.seed)
    if config.clean_stale_shared_memory and dist.get_local_rank() == 0:  # the other local ranks would find the same
        removed = remove_stale_streaming_files()
        if removed:
            log.info("removed %d shared-memory blocks and lock files of ended Streaming runs", len(removed))


def build_model_and_start(config: TrainConfig, tokenizer) -> tuple[Any, str | None]:
    """The Composer model, with a Hugging Face folder's weights already in it when `load_path` is one; and the
    load_path left for Composer (its own checkpoints only)."""
    from mosaicbert.builders import build_model

    model = build_model(config, tokenizer)
    load_path = config.load_path
    if load_path is None or not os.path.isdir(load_path):
        return model, load_path
    resuming = config.autoresume and config.save_folder is not None and \
        os.path.exists(os.path.join(config.save_folder, "latest-rank0.pt"))
    if not resuming:  # else autoresume continues from this run's own checkpoint, which has the folder's weights
        # A Hugging Face folder: its weights go in now (same widths as the YAML's model); optimizer, schedule
        # and data start fresh.
        from mosaicbert.model.loading import load_weights_into

        load_weights_into(model.model, load_path, config.model["name"])
    return model, None


def build_optimizer_for(config: TrainConfig, model):
    from mosaicbert.builders import build_optimizer

    optimizer = build_optimizer(config, model.parameters())
    if hasattr(model, "reshape_hooks"):
        # A checkpoint of a structurally pruned model reshapes the model on load: the optimizer follows.
        from mosaicbert.model.pruning import slice_optimizer_state

        model.reshape_hooks.append(lambda replaced: slice_optimizer_state([optimizer], replaced))
    return optimizer


def build_data(config: TrainConfig, tokenizer):
    """(train loader, evaluators, length schedule or None)."""
    from composer.core import Evaluator

    from mosaicbert.data.text_dataset import build_mlm_dataloader

    length_schedule = None
    if config.seq_len_schedule is not None:
        from mosaicbert.data.length_schedule import LengthSchedule

        length_schedule = LengthSchedule.from_config(config, tokenizer.sep_token_id)
    train_loader = build_mlm_dataloader(
        config.train_loader, tokenizer, config.max_seq_len, config.device_train_batch_size, seed=config.seed,
        pin_memory=config.device == "gpu", length_schedule=length_schedule,
    )
    evaluators = []
    if config.eval_loader is not None:
        eval_loader = build_mlm_dataloader(
            config.eval_loader, tokenizer, config.max_seq_len, config.device_eval_batch_size, seed=config.seed + 1,
            pin_memory=config.device == "gpu",
        )
        evaluators.append(Evaluator(label="eval", dataloader=eval_loader, metric_names=["LanguageCrossEntropy", "MaskedAccuracy"]))
    return train_loader, evaluators, length_schedule


def build_callbacks_and_loggers(config: TrainConfig, datasets: list, length_schedule, extra_callbacks: list,
                                extra_loggers: list):
    """(callbacks, loggers, the run summary callback, Composer's max_duration): the config's own and this
    package's (summary, RNG on resume, checkpoint on SIGTERM, Streaming clean-up, time budget, logs)."""
    from composer.loggers import FileLogger

    from mosaicbert.builders import build_section
    from mosaicbert.callbacks.checkpoint_on_signal import CheckpointOnSignal
    from mosaicbert.callbacks.jsonl_logger import JSONLinesLogger
    from mosaicbert.callbacks.resume_rng import ResumeRNG
    from mosaicbert.callbacks.run_summary import RunSummary
    from mosaicbert.callbacks.time_budget import PLACEHOLDER_MAX_DURATION, TimeBudget
    from mosaicbert.callbacks.streaming_cleanup import ReleaseStreamingResources

    summary = RunSummary(config.run_folder, config.save_folder, config.time_budget_seconds)
    callbacks = build_section(config, "callbacks") + [summary, ResumeRNG(), CheckpointOnSignal(),
                                                      ReleaseStreamingResources(datasets)] + extra_callbacks
    if length_schedule is not None:
        callbacks.append(length_schedule)
    max_duration = config.max_duration
    if config.time_budget_seconds is not None:
        # First among the callbacks, so the others see each batch's new plan at the same event.
        callbacks.insert(0, TimeBudget(config.time_budget_seconds))
        max_duration = PLACEHOLDER_MAX_DURATION
    loggers = build_section(config, "loggers") + [
        JSONLinesLogger(os.path.join(config.run_folder, "metrics.jsonl")),
        FileLogger(os.path.join(config.run_folder, "console-rank{rank}.log"), flush_interval=50),
    ] + extra_loggers
    return callbacks, loggers, summary, max_duration


def write_run_record(config: TrainConfig, model) -> None:
    """The resolved config and the model's architecture in the run folder (rank 0)."""
    from composer.utils import dist

    if dist.get_global_rank() == 0:
        os.makedirs(config.run_folder, exist_ok=True)
        OmegaConf.save(OmegaConf.create(to_dict(config)), os.path.join(config.run_folder, "config.yaml"))
        write_model_config(config, model)


def build_trainer(config: TrainConfig, extra_callbacks: list | None = None, extra_loggers: list | None = None):
    """Everything the run needs, in a fixed order; returns (trainer, summary callback). Composer and the data
    stack are imported by the steps, so `--help` and config errors stay fast."""
    from composer import Trainer

    from mosaicbert.builders import build_scheduler, build_section
    from mosaicbert.data.tokenizer import build_tokenizer

    prepare_run(config)
    tokenizer = build_tokenizer(config.tokenizer_name, config.max_seq_len)
    model, load_path = build_model_and_start(config, tokenizer)
    optimizer = build_optimizer_for(config, model)
    train_loader, evaluators, length_schedule = build_data(config, tokenizer)
    datasets = [train_loader.dataloader.dataset] + [e.dataloader.dataloader.dataset for e in evaluators]
    callbacks, loggers, summary, max_duration = build_callbacks_and_loggers(
        config, datasets, length_schedule, list(extra_callbacks or []), list(extra_loggers or []))
    write_run_record(config, model)
    trainer = Trainer(
        run_name=config.run_name,
        seed=config.seed,
        model=model,
        train_dataloader=train_loader,
        eval_dataloader=evaluators or None,
        eval_interval=config.eval_interval,
        eval_subset_num_batches=config.eval_subset_num_batches,
        max_duration=max_duration,
        optimizers=optimizer,
        schedulers=build_scheduler(config),
        algorithms=build_section(config, "algorithms"),
        callbacks=callbacks,
        loggers=loggers,
        device=config.device,
        precision=config.precision,
        compile_config=config.compile_config,
        device_train_microbatch_size=config.device_train_microbatch_size,
        save_folder=config.save_folder,
        save_interval=config.save_interval,
        save_num_checkpoints_to_keep=config.save_num_checkpoints_to_keep,
        save_overwrite=config.save_overwrite,
        autoresume=config.autoresume,
        load_path=load_path,
        load_weights_only=config.load_weights_only,
        progress_bar=config.progress_bar,
        log_to_console=config.log_to_console,
        console_log_interval=config.console_log_interval,
        python_log_level=config.python_log_level,
        dist_timeout=config.dist_timeout,
    )
    return trainer, summary


def train(config: TrainConfig, extra_callbacks: list | None = None, extra_loggers: list | None = None) -> dict:
    """Run pretraining; returns the run summary (first/last eval, throughput, checkpoint). A `nonfinite_guard`
    in rollback mode ends an attempt with RollBack: the run then resumes from its last checkpoint."""
    from mosaicbert.callbacks.nonfinite_guard import RollBack
    from mosaicbert.checkpointing import remove_saver_temp_folders

    log.info(
        "%s: %s; device batch %d, microbatch %s, world size %d", config.run_name, describe_defaults(config),
        config.device_train_batch_size, config.device_train_microbatch_size, config.world_size,
    )
    while True:
        created = [f for f in (config.run_folder, config.save_folder) if f and not os.path.exists(f)]
        try:
            trainer, summary = build_trainer(config, extra_callbacks, extra_loggers)
        except UserError:
            for folder in created:  # bad input (e.g. a checkpoint that does not load) leaves nothing behind
                shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            if config.eval_first and config.eval_loader is not None and int(trainer.state.timestamp.batch) == 0:
                trainer.eval()
            trainer.fit()
            model = trainer.state.model
            write_model_config(config, model.module if hasattr(model, "module") else model)
            return summary.summary
        except RollBack as rollback:
            if config.save_folder is None:
                raise UserError(f"{rollback} But the run has no save_folder to resume from: set save_folder, "
                                "or callbacks.nonfinite_guard.action=stop or skip.") from None
            log.warning("%s", rollback)
            config = config.model_copy(update={"autoresume": True})
        finally:
            trainer.close()
            remove_saver_temp_folders(trainer)


@entry_point()
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    train(load_config(argv[0], argv[1:]))
    return 0
