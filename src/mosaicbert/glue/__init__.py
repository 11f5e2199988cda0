"""GLUE fine-tuning: the MosaicBERT paper's protocol (per-task settings, MNLI warm start, seeds) and `sane`."""
