"""What a fresh clone gets: no links out of the repository, no paths that exist on one machine only.

A tracked `data` symlink into a temporary folder once broke `make demo` for every new user while
CI stayed green; these checks fail on that class of mistake.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import REPO

# Absolute paths that only exist on some build machine: home folders, temporary folders, the
# workspace this repository was developed in, and this checkout's own location.
MACHINE_PATH = re.compile(r"(?<![\w.~$])/(?:home|Users|root|tmp|work|mnt|scratch)/[\w.-]+")
SKIPPED = {"requirements.lock", "tests/test_repository.py"}
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".md", ".txt", ".cfg", ".sh", ".json", ".tsv", ""}


def tracked_files() -> list[tuple[str, str]]:
    """(mode, path) of every tracked file; skipped outside a git checkout (e.g. an sdist)."""
    try:
        out = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [(line.split()[0], line.split("\t", 1)[1]) for line in out.splitlines()]


def test_no_tracked_symlink_points_outside_the_repository():
    bad = []
    for mode, path in tracked_files():
        if mode != "120000":
            continue
        target = os.readlink(REPO / path) if (REPO / path).is_symlink() else ""
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if not target or os.path.isabs(target) or resolved.startswith(".."):
            bad.append(f"{path} -> {target}")
    assert not bad, f"tracked symlinks leave the repository (a fresh clone breaks): {bad}"


def test_tracked_files_hold_no_absolute_path_of_a_build_machine():
    own = {str(REPO)}
    bad = []
    for mode, path in tracked_files():
        # requirements.lock is pip's output; this file holds the examples the pattern must catch.
        if mode == "120000" or os.path.splitext(path)[1] not in TEXT_SUFFIXES or path in SKIPPED:
            continue
        try:
            text = (REPO / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            hits = [m.group(0) for m in MACHINE_PATH.finditer(line)] + [p for p in own if p in line]
            bad += [f"{path}:{number}: {hit}" for hit in hits]
    assert not bad, "absolute paths of one machine in tracked files:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_are_for():
    assert MACHINE_PATH.search("checkpoint: /work/main/runs/x.pt")
    assert MACHINE_PATH.search("data -> /tmp/fresh/data")
    assert not MACHINE_PATH.search("runs/demo/checkpoints/latest-rank0.pt and tmp_path / 'x'")
