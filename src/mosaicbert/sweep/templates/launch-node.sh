#!/bin/bash
# One Composer launcher per node of a sweep's pretraining job, for run $1. World size, node rank,
# master address and port come from Slurm (SLURM_NNODES, SLURM_NODEID) and the batch script
# (MASTER_ADDR, MASTER_PORT), so the same line serves one node or many.
set -euo pipefail
cd {{repo}}
NPROC={{nproc}}
case "$1" in
{{cases}}
  *) echo "launch-node.sh: no run named '$1' in this sweep" >&2; exit 2 ;;
esac
# Slurm's SIGTERM before the time limit reaches every process of the step. The launcher ignores it
# (the ignore survives exec) so it does not die and take the ranks with it; each rank installs its
# own handler, saves a checkpoint at the end of its current step and exits, and the resubmitted
# run resumes from there (autoresume=true).
trap '' TERM
# Torch's CPU threads: the CPUs Slurm gave this task, shared by its ranks (oversubscribed threads crawl).
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / NPROC > 0 ? SLURM_CPUS_PER_TASK / NPROC : 1 )); fi
exec {{composer}} --world_size $(( SLURM_NNODES * NPROC )) --nproc "$NPROC" \
  --node_rank "$SLURM_NODEID" --base_rank $(( SLURM_NODEID * NPROC )) \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" src/main.py "${ARGS[@]}"
