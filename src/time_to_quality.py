"""Time to quality: `python src/time_to_quality.py yamls/sweeps/time-to-quality.yaml` (see --help)."""

import sys

from mosaicbert.sweep.study import main

if __name__ == "__main__":
    sys.exit(main())
