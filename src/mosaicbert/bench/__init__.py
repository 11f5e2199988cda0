"""Training-step throughput benchmark: MosaicBERT against Hugging Face BERT and ModernBERT (benchmarks/throughput.py)."""
