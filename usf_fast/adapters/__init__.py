"""Adapters to other ecosystems (diffusers)."""
