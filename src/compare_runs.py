"""Compare pretraining runs in (baseline, candidate) pairs on the same data and steps:

    python src/compare_runs.py runs/<baseline> runs/<candidate> [runs/<baseline 2> runs/<candidate 2> ...]

Several pairs (repeats) add the mean, standard deviation and range of the time saved and of the
final evaluation over the pairs.
"""

import sys

from mosaicbert.errors import entry_point
from mosaicbert.reports.runs import compare_runs


@entry_point()
def main(folders: list[str]) -> int:
    if not folders or len(folders) % 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(compare_runs(list(zip(folders[::2], folders[1::2]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
