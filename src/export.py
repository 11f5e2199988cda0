"""Export a MosaicBERT pretraining checkpoint as a Hugging Face model folder (config.json + weights):

    python src/export.py runs/<run>/checkpoints/latest-rank0.pt exported/<name>

Pruned (EarlyBERT) checkpoints keep their widths. Load with MosaicBertForMaskedLM.from_pretrained.
"""

import sys

from mosaicbert.errors import UserError
from mosaicbert.model.loading import export_pretrained

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        export_pretrained(sys.argv[1], sys.argv[2])
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {sys.argv[2]}")
