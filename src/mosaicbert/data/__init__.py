"""Data: MDS corpus preparation, tokenizers, streaming text datasets and MLM masking."""
