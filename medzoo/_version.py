"""medzoo's version, in a module that imports nothing: pyproject.toml reads it when building, and core modules
record it in lineage without importing the package's ``__init__`` (which imports the trainer)."""

__version__ = "0.1.0"
