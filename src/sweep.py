"""Pareto sweeps: `python src/sweep.py yamls/sweeps/<name>.yaml --launcher local|slurm` (see --help)."""

import sys

from mosaicbert.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
