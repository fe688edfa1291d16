"""How local things are named in public: path-given datasets and ``file:`` weights by their last path
component, never the path (a hospital's folder structure is not for a model card). A leaf module: the
lineage, the store and the dataset identity all name things this way."""

from __future__ import annotations

from pathlib import Path


def is_path_arg(arg: str | None) -> bool:
    """Whether a ``name:arg`` argument is a local path (``imagefolder:/data/x``, ``csv:./labels.csv``)."""
    if not arg:
        return False
    return "/" in arg or "\\" in arg or arg.startswith(("~", "."))


def public_dataset(dataset: str) -> str:
    """How a dataset is named in names, cards and metadata: a path-given one by its folder's (or file's)
    last component, never the path (a hospital's folder structure is not for a public model card)."""
    base, _, arg = dataset.partition(":")
    if not is_path_arg(arg):
        return dataset
    last = Path(arg.rstrip("/\\")).expanduser().name or "data"
    return f"{base}:{last}"


def public_source(name: str) -> str:
    """How a chain's first weights are named in cards and metadata: ``file:`` by the file's name, never its
    path; every other source (``hf-hub:org/name@rev``, ``url:``, catalogue names) as it is."""
    base, _, arg = name.partition(":")
    if base != "file" or not arg:
        return name
    last = Path(arg.rstrip("/\\")).expanduser().name
    return f"file:{last or 'weights'}"
