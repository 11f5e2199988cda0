"""Composer algorithms of this project (EarlyBERT)."""
