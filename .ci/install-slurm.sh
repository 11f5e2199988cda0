#!/usr/bin/env bash
# Installs Debian's Slurm and munge so the tests can start a real single-node cluster.
# Never fails CI: where the packages cannot be installed, the Slurm tests skip with the reason.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
COMMANDS=(sbatch slurmctld slurmd munged)

# Debian installs the daemons into sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
missing=()
for command in "${COMMANDS[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("$command")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "Slurm is installed already (${COMMANDS[*]} on PATH)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "not root, so ${missing[*]} cannot be installed: the Slurm tests will be skipped"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get, so ${missing[*]} cannot be installed: the Slurm tests will be skipped"
    exit 0
fi

start=$(date +%s)
if ! apt-get update; then
    echo "apt-get update failed: the Slurm tests will be skipped"
    exit 0
fi
# --no-install-recommends: the daemons and clients are 8 packages; slurm-wlm would pull 43.
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
    echo "apt-get install ${PACKAGES[*]} failed: the Slurm tests will be skipped"
    exit 0
fi
echo "installed ${PACKAGES[*]} in $(( $(date +%s) - start )) s"
