"""Composer callbacks and logger destinations of this project."""
