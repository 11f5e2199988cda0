"""The installed commands (pyproject's [project.scripts]) and the checkout's scripts are one command each."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

CHECKOUT_SCRIPTS = {"mosaicbert-prep": "data_prep/convert_dataset.py", "mosaicbert-glue": "src/glue.py",
                    "mosaicbert-sweep": "src/sweep.py", "mosaicbert-export": "src/export.py"}


def installed(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def test_every_installed_command_has_its_checkout_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(CHECKOUT_SCRIPTS)
    assert all(Path(installed(name)).is_file() for name in scripts), "reinstall: make install"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKOUT_SCRIPTS))
def test_a_command_and_its_checkout_script_say_the_same(name):
    def help_text(command, program):  # wide enough that no usage line wraps, whatever the program's name
        out = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={**os.environ, "COLUMNS": "1000"})
        assert out.returncode == 0, out.stderr
        return out.stdout.replace(f"usage: {program} ", "usage: PROGRAM ", 1)

    script = CHECKOUT_SCRIPTS[name]
    text = help_text([installed(name)], name)
    assert text.strip() and text == help_text([sys.executable, script], Path(script).name)


@pytest.mark.slow
def test_bad_input_to_a_command_is_one_error_line_and_status_2(tmp_path):
    result = subprocess.run([installed("mosaicbert-export"), str(tmp_path / "no-such.pt"), str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr and not (tmp_path / "out").exists()
