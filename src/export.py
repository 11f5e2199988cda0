"""Export a trained model as a Hugging Face folder: `python src/export.py SOURCE OUT_DIR` (the same command as
`mosaicbert-export`; see --help)."""

import sys

from mosaicbert.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
