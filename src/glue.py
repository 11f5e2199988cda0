"""GLUE fine-tuning entry point: `python src/glue.py yamls/glue/<name>.yaml [key=value ...]`."""

import sys

from mosaicbert.glue.runner import main

if __name__ == "__main__":
    sys.exit(main())
