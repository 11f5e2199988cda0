"""Soak: short jobs one after another in one process (pretraining, a GLUE job, an EarlyBERT draw), three rounds;
nothing may accumulate: open file descriptors, threads, shared-memory segments, temporary files, resident memory."""

from __future__ import annotations

import os
import tempfile

import psutil
import pytest

from mosaicbert.config import load_config
from mosaicbert.glue import job as glue_job
from mosaicbert.glue.config import load_glue_config
from mosaicbert.glue.demo_data import write_demo_tasks
from mosaicbert.glue.runner import make_jobs
from mosaicbert.train import train

from conftest import DEMO_YAML, REPO, tiny_overrides
from test_kill_resume import EARLYBERT


def resources() -> dict[str, object]:
    process = psutil.Process()
    return {"fds": process.num_fds(), "threads": process.num_threads(),
            "shm": set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set(),
            "tmp": set(os.listdir(tempfile.gettempdir())), "rss": process.memory_info().rss}


@pytest.mark.slow
def test_jobs_one_after_another_leak_nothing(clean_env, sample_root, tmp_path):
    texts = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
             for i in range(60)]
    data = write_demo_tasks(tmp_path / "glue", train_size=24, dev_size=8, texts=texts)
    rounds = []
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        pretrained = train(load_config(DEMO_YAML, tiny_overrides(sample_root, folder / "pretrain", max_duration="4ba",
                                                                  save_interval="4ba", eval_interval="4ba")))
        config = load_glue_config(REPO / "yamls" / "glue" / "demo.yaml", [
            f"starting_checkpoint={pretrained['checkpoint']}", f"run_folder={folder / 'glue'}", f"data_local={data}",
            f"tokenizer_name={sample_root / 'tokenizer'}", "tasks=[rte]", "task_overrides.rte.epochs=1",
            "task_overrides.rte.seeds=[19]", "max_seq_len=64"])
        result = glue_job.run(make_jobs(config, ["rte"], config.starting_checkpoint, set())[0])
        assert result["status"] == "ok"
        train(load_config(DEMO_YAML, tiny_overrides(sample_root, folder / "earlybert", **EARLYBERT)))
        assert (folder / "earlybert" / "ticket.json").is_file()
        rounds.append(resources())
    first, last = rounds[0], rounds[-1]  # the first round pays one-off costs (imports, caches, thread pools)
    assert last["fds"] <= first["fds"], (first["fds"], last["fds"])
    assert last["threads"] <= first["threads"], (first["threads"], last["threads"])
    assert last["shm"] <= first["shm"], last["shm"] - first["shm"]
    assert last["tmp"] <= first["tmp"], last["tmp"] - first["tmp"]
    growth = (last["rss"] - first["rss"]) / 2**20
    assert growth < 150, f"resident memory grew by {growth:.0f} MiB over two rounds"
