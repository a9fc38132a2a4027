"""Flax models, loaded by name."""
