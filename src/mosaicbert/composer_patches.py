"""Every replacement of a Composer internal this package makes, in one place, installed once.

Each patch swaps a module-level function of mosaicml Composer for this package's own, and says which
Composer behaviour it fixes. They were written against Composer COMPOSER_VERSION and read its
internals (a private writer, the names its trainer looks up), so `apply()` refuses any other
version: a renamed or rewritten internal would make a patch do nothing, silently. After upgrading
Composer, read each patched function in the new version, run the checkpoint tests
(tests/test_train.py, tests/test_kill_resume.py, tests/test_composer_patches.py), then change
COMPOSER_VERSION.

Other code written for the same version, which uses Composer without replacing anything:
- callbacks/checkpoint_on_signal.py calls CheckpointSaver's private `_save_checkpoint`: Composer has
  no public "save now" for callbacks.
- callbacks/resume_rng.py: the RNG state is restored mid-epoch only while the dataloader is spun
  forward, which a StreamingDataset resuming by itself never does.
- checkpointing.remove_saver_temp_folders: CheckpointSaver's symlink folder outlives a closed trainer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from mosaicbert.errors import UserError

COMPOSER_VERSION = "0.32.1"


@dataclass(frozen=True)
class Patch:
    module: ModuleType
    name: str
    replacement: Callable
    fixes: str  # the Composer behaviour it fixes


def patches() -> list[Patch]:
    from composer.utils import checkpoint, dist

    from mosaicbert import checkpointing

    return [
        Patch(checkpoint, "_write_checkpoint_file", checkpointing.atomic_write,
              "a checkpoint is written straight to its final name, so a run killed mid-save leaves a truncated "
              "file that looks whole"),
        Patch(checkpoint, "load_checkpoint", checkpointing.load_with_clear_errors,
              "a missing, damaged or incompatible checkpoint ends in torch's traceback"),
        Patch(dist, "get_node_signal_file_name", checkpointing.per_node_signal_file_name,
              "on a save folder that all nodes share, every node's local rank 0 writes and removes the same signal "
              "file, so multi-node autoresume fails before training starts"),
    ]


def install(chosen: Sequence[Patch], version: str) -> None:
    """Each patch in place, after checking the Composer version and that every patched name exists."""
    if version != COMPOSER_VERSION:
        raise UserError(f"mosaicbert's Composer patches (src/mosaicbert/composer_patches.py) were written for composer "
                        f"{COMPOSER_VERSION}, and this is composer {version}. Install the locked version (pip install "
                        f"mosaicml=={COMPOSER_VERSION}, or make install), or check each patch against {version} and "
                        "update COMPOSER_VERSION.")
    for patch in chosen:
        if not callable(getattr(patch.module, patch.name, None)):
            raise UserError(f"composer {version} has no {patch.module.__name__}.{patch.name}, which "
                            "src/mosaicbert/composer_patches.py replaces; the patch needs rewriting for it.")
    for patch in chosen:
        setattr(patch.module, patch.name, patch.replacement)


@functools.cache
def apply() -> None:
    """Install every patch, once per process, on the Composer version they were written for."""
    import composer

    install(patches(), composer.__version__)
