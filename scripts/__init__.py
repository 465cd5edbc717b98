"""Thin runnable wrappers: ``python -m scripts.NAME`` (the logic lives in clip_retrieval)."""
