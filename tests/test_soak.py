"""Soak: short jobs one after another in one process (pretraining, a GLUE job, an EarlyBERT draw), three rounds;
nothing may accumulate: open file descriptors, threads, shared-memory segments, temporary files, resident memory."""

from __future__ import annotations

import os
import tempfile

import psutil
import pytest

from mosaicbert.config import load_config
from mosaicbert.callbacks.streaming_cleanup import ReleaseStreamingResources
from mosaicbert.data.text_dataset import StreamingTextDataset
from mosaicbert.glue import finetune as glue_job
from mosaicbert.glue.config import load_glue_config
from mosaicbert.glue.demo_data import write_demo_tasks
from mosaicbert.glue.runner import make_jobs
from mosaicbert.train import train

from conftest import DEMO_YAML, REPO, tiny_overrides
from helpers.training import EARLYBERT


def resources() -> dict[str, object]:
    process = psutil.Process()
    return {"fds": process.num_fds(), "threads": process.num_threads(),
            "shm": set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set(),
            "tmp": set(os.listdir(tempfile.gettempdir())), "rss": process.memory_info().rss}


@pytest.mark.serial  # compares machine-wide /dev/shm and temporary-folder listings
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


def descriptors_on(prefix: int) -> int:
    """This process's open descriptors on the shared-memory blocks of a Streaming prefix."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return sum(target.startswith(f"/dev/shm/{prefix:06}_") for target in targets)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads open descriptors from Linux's /proc")
def test_building_a_dataset_keeps_no_handle_on_other_runs_blocks(sample_root):
    """Streaming looks at every prefix already taken to choose a free one; the handles it opens there (on
    another run's blocks, here a dataset still in use) must not stay open for the life of the process."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sample_root / "tokenizer")

    def dataset() -> StreamingTextDataset:
        return StreamingTextDataset(tokenizer, 64, pretokenized=False, mask_seed=0, fixed_masks=False,
                                    local=str(sample_root), split="val_small", batch_size=4)

    first = dataset()
    own = descriptors_on(first._shm_prefix_int)
    later = [dataset() for _ in range(3)]
    assert descriptors_on(first._shm_prefix_int) == own
    ReleaseStreamingResources([first, *later]).close(None, None)
    assert all(descriptors_on(d._shm_prefix_int) == 0 for d in [first, *later])
