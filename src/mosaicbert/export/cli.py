"""Export a trained model as a Hugging Face model folder that loads with plain transformers (`mosaicbert-export`,
or `python src/export.py` in a checkout; the same command):

    python src/export.py runs/<run>/checkpoints/latest-rank0.pt exported/<name>
    python src/export.py runs/<glue run>/models/<job> exported/<name>      # a fine-tuned classifier

MosaicBERT folders carry their modeling code: AutoModelForMaskedLM.from_pretrained(folder,
trust_remote_code=True) works without this package. The hf_bert baseline exports as a plain
BertForMaskedLM folder. The result is checked for logit parity in a separate process first.
Composer checkpoints are pickles: export only checkpoints you or someone you trust wrote.
"""

import argparse

from mosaicbert.errors import entry_point


@entry_point()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Composer checkpoint (.pt) or a model folder this package saved")
    parser.add_argument("out_dir", help="the folder to write (must not exist unless --overwrite)")
    parser.add_argument("--tokenizer", help="tokenizer name or folder (default: the run's tokenizer_name)")
    parser.add_argument("--glue", action="append", default=[], metavar="RUN_FOLDER",
                        help="a GLUE run folder whose results go in the model card (repeatable); GLUE runs "
                             "beside the pretraining run that started from this checkpoint are found anyway")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the parity check in a separate process")
    args = parser.parse_args(argv)
    from mosaicbert.export import export_model

    export_model(args.source, args.out_dir, args.tokenizer, args.glue, args.overwrite, args.check)
    print(f"wrote {args.out_dir}")
    return 0

