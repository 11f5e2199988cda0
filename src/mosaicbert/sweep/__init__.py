"""Pareto sweeps: expand a sweep YAML into runs, launch them locally or on Slurm, evaluate checkpoints and report."""
