"""Corpus cleaning stages."""
