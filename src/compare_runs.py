"""Compare pretraining runs in (baseline, candidate) pairs on the same data and steps:

    python src/compare_runs.py runs/<baseline> runs/<candidate> [runs/<baseline 2> runs/<candidate 2> ...]

Several pairs (repeats) add the mean, standard deviation and range of the time saved and of the
final evaluation over the pairs.
"""

import sys

from mosaicbert.callbacks.run_summary import compare_runs
from mosaicbert.errors import UserError

if __name__ == "__main__":
    folders = sys.argv[1:]
    if not folders or len(folders) % 2:
        sys.exit(__doc__.strip())
    try:
        print(compare_runs(list(zip(folders[::2], folders[1::2]))))
    except UserError as err:
        sys.exit(f"error: {err}")
