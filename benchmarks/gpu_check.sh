#!/usr/bin/env bash
# `make gpu-check`: the GPU tests and benchmarks/gpu_check.py on this machine's GPU, in one command.
# Python: .venv where `make install` made one; otherwise the machine's python3 with its own torch (a GPU
# image), this project's other packages installed over it, without their dependencies, from the wheels in
# .whl/ (`make gpu-wheels` downloads them on a machine with network). Without CUDA: one line, exit 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${GPU_CHECK_OUT:-runs/gpu-check}
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu-check: no CUDA GPU on this machine; nothing measured (run it on a GPU machine: docs/benchmarks.md)"
    exit 0
fi
if [ "$python" = python3 ]; then
    site=${TMPDIR:-/tmp}/mosaicbert-gpu-site
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl || exit 2
    fi
    export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! missing=$("$python" -c 'import composer, transformers, mosaicbert.builders, mosaicbert.bench.measure' 2>&1); then
    echo "gpu-check: this project's packages do not import here (make install, or make gpu-wheels on a machine" \
         "with network and copy .whl/ here): ${missing##*$'\n'}" >&2
    exit 2
fi
mkdir -p "$out"
"$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}
"$python" benchmarks/gpu_check.py --out "$out" "$@"
check=$?
echo "gpu-check: gpu tests exit $tests, check exit $check; results in $out"
[ "$tests" -eq 0 ] && [ "$check" -eq 0 ]
