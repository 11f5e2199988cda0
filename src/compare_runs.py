"""Compare two pretraining runs: `python src/compare_runs.py runs/<baseline> runs/<candidate>`."""

import sys

from mosaicbert.callbacks.run_summary import compare_runs

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(compare_runs(sys.argv[1], sys.argv[2]))
