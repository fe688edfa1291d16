"""medzoo: a plugin-based model zoo for multi-stage transfer learning in medical imaging."""

from ._version import __version__
from .evaluation import evaluate  # the module is medzoo.evaluation; medzoo.evaluate is the function
from .hookspecs import hookimpl
from .inference import predict  # the module is medzoo.inference; medzoo.predict is the function
from .models import create_model
from .registry import ArchSpec, DatasetSpec, FreezePolicySpec, MedzooError, WeightSourceSpec
from .registry import registry as _registry
from .trainer import Runtime, StageResult, train
from .zoo import load, transforms_for


def list_archs() -> list[ArchSpec]:
    """All registered architectures, sorted by name."""
    return _registry().list("archs")


def list_datasets() -> list[DatasetSpec]:
    """All registered datasets, sorted by name."""
    return _registry().list("datasets")


def list_policies() -> list[FreezePolicySpec]:
    """All registered freeze policies, sorted by name."""
    return _registry().list("policies")


def list_sources() -> list[WeightSourceSpec]:
    """All registered weight sources, sorted by name."""
    return _registry().list("sources")


def get_arch(name: str) -> ArchSpec:
    """The architecture spec for ``name`` (``swin_t``, ``timm:convnext_tiny``, ``resnet50@truncate=1``)."""
    return _registry().resolve("archs", name).spec


def get_dataset(name: str) -> DatasetSpec:
    return _registry().resolve("datasets", name).spec


def get_policy(name: str) -> FreezePolicySpec:
    return _registry().resolve("policies", name).spec


def get_source(name: str) -> WeightSourceSpec:
    return _registry().resolve("sources", name).spec


__all__ = [
    "ArchSpec", "DatasetSpec", "FreezePolicySpec", "WeightSourceSpec", "MedzooError", "hookimpl",
    "create_model", "load", "transforms_for", "train", "evaluate", "predict", "Runtime", "StageResult",
    "get_arch", "get_dataset", "get_policy", "get_source",
    "list_archs", "list_datasets", "list_policies", "list_sources", "__version__",
]
