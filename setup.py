"""Build script. Metadata lives in pyproject.toml; compiled extensions (csrc/) are added here."""
from setuptools import setup

setup()
