"""MLM pretraining entry point: `composer src/main.py <yaml> [key=value ...]` (or plain `python`)."""

import sys

from mosaicbert.train import main

if __name__ == "__main__":
    sys.exit(main())
