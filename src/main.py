"""MLM pretraining entry point: `composer src/main.py <yaml> [key=value ...]` (or plain `python`)."""

import sys

from mosaicbert.allocator import reexec_with_malloc_tuning

if __name__ == "__main__":
    reexec_with_malloc_tuning()  # before torch loads: see mosaicbert/allocator.py
    from mosaicbert.train import main

    sys.exit(main())
