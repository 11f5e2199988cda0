"""Write text corpora as MDS shards (the same command as `mosaicbert-prep`; see --help):

    python data_prep/convert_dataset.py c4 --out-root data/c4            # allenai/c4 (en) from the hub
    python data_prep/convert_dataset.py c4 --local-dir DIR --out-root data/c4   # local C4 json/json.gz files
    python data_prep/convert_dataset.py sample --out-root data/sample    # offline: Python stdlib docs
    python data_prep/convert_dataset.py text --input notes/ more/*.jsonl.gz --out-root data/mycorpus   # your text
"""

import sys

if __name__ == "__main__":  # not when a spawned tokenizing worker runs this file again (as __mp_main__)
    from mosaicbert.data.cli import command

    sys.exit(command())
