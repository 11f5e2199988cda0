"""The Composer patches: installed on the version they were written for, refused on any other."""

from __future__ import annotations

from types import SimpleNamespace

import composer
import pytest

from mosaicbert import checkpointing, composer_patches
from mosaicbert.errors import UserError


def test_every_patch_is_in_place_after_apply_on_the_locked_composer():
    assert composer.__version__ == composer_patches.COMPOSER_VERSION  # requirements.lock pins it
    composer_patches.apply()
    from composer.utils import checkpoint, dist

    assert checkpoint._write_checkpoint_file is checkpointing.atomic_write
    assert checkpoint.load_checkpoint is checkpointing.load_with_clear_errors
    assert dist.get_node_signal_file_name is checkpointing.per_node_signal_file_name
    assert {(p.module, p.name) for p in composer_patches.patches()} == {
        (checkpoint, "_write_checkpoint_file"), (checkpoint, "load_checkpoint"), (dist, "get_node_signal_file_name")}


def test_another_composer_version_is_refused_with_the_fix_and_nothing_patched():
    module = SimpleNamespace(writer=print)
    patch = composer_patches.Patch(module, "writer", len, "a test")
    with pytest.raises(UserError, match=r"written for composer 0\.32\.1, and this is composer 0\.33\.0.*mosaicml==0\.32\.1"):
        composer_patches.install([patch], "0.33.0")
    assert module.writer is print


def test_a_patched_name_that_is_gone_is_refused_before_any_patch_goes_in():
    module = SimpleNamespace(writer=print)
    patches = [composer_patches.Patch(module, "writer", len, "a test"),
               composer_patches.Patch(SimpleNamespace(__name__="composer.gone"), "renamed", len, "a test")]
    with pytest.raises(UserError, match="has no composer.gone.renamed"):
        composer_patches.install(patches, composer_patches.COMPOSER_VERSION)
    assert module.writer is print
