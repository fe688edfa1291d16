"""A checkpoint's lineage, typed: which weights it started from, and every stage that trained it.

Stored as JSON under ``config.json["medzoo"]`` (timm ignores unknown keys, so plain timm still loads the
file). ``Lineage.from_dict`` is the one reader and ``Lineage.to_dict`` the one writer; nothing else in
medzoo reads the raw dict. ``schema`` says which layout a file uses: 1 is the layout before the field
existed (read as is), 2 adds licence ids, a publishable data description and the overlap record. Keys
this medzoo does not know are kept (``extra``) and written back unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import licenses
from .naming import public_dataset, public_source
from .registry import MedzooError

SCHEMA = 2
MAX_CLASSES = 100_000  # bounds what a config.json may ask medzoo to allocate
MAX_CHANS = 64
MAX_IMAGE_SIZE = 16_384


def _broken(where: str, what: str) -> MedzooError:
    return MedzooError(f"{where}: its lineage (config.json[\"medzoo\"]) is broken: {what}; re-train it or "
                       "re-download it")


def _check(where: str, value: Any, kind: type | tuple, what: str, *, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _broken(where, f"{what} is {value!r}, not {getattr(kind, '__name__', 'a valid value')}")
    return value


def bounded_int(where: str, value: Any, what: str, low: int, high: int, *, optional: bool = True) -> int | None:
    """An int read from a file, within [low, high] (a junk 1e9 must not become a 2 TB allocation)."""
    if value is None and optional:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _broken(where, f"{what} is {value!r}, not an integer in {low}..{high}")
    return value


def _split(cls, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in names}


def _dump(obj) -> dict[str, Any]:
    out = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "extra"}
    return {**obj.extra, **{k: v for k, v in out.items() if v is not None}}


@dataclass
class SourceRecord:
    """The weights a chain started from (``imagenet:<tag>``, ``scratch``, ``file:…``, ``hf-hub:…``, …)."""

    name: str
    tag: str = ""
    sha256: str = ""
    url: str | None = None
    license: str | None = None  # licence id of the upstream weights; None: not recorded
    license_url: str | None = None
    citation: str | None = None
    method: str | None = None
    redistributable: bool = True  # False: the upstream terms forbid redistributing derived weights
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SourceRecord:
        if d is None:
            return cls(name="?")
        if not isinstance(d, dict):
            raise _broken(where, f"'source' is {d!r}, not an object")
        known, extra = _split(cls, d)
        for key in ("name", "tag", "sha256", "url", "license", "license_url", "citation", "method"):
            _check(where, known.get(key), str, f"source.{key}")
        _check(where, known.get("redistributable"), bool, "source.redistributable")
        if known.get("redistributable") is None:
            known.pop("redistributable", None)
        if known.get("license"):
            known["license"] = licenses.license_id(known["license"])
        return cls(**{"name": "?", **known}, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = _dump(self)
        if self.redistributable:
            out.pop("redistributable")  # recorded only when it restricts something (as before schema 2)
        return out


@dataclass
class StageRecord:
    """One training stage: data, recipe, result and the weights it wrote."""

    dataset: str  # the registry name; a dataset given by path is recorded by name only (see ``data``)
    fingerprint: str = ""
    task: str = "classification"
    classes: list[str] = field(default_factory=list)
    license: str = licenses.UNKNOWN  # Hugging Face / SPDX id
    license_url: str | None = None
    data: dict[str, Any] | None = None  # publishable description: {"name", "records", "fingerprint"}
    overlap: dict[str, Any] | None = None  # the chain leakage check's record when --allow-overlap was given
    modality: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    freeze: str = ""
    epochs_run: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    val_metrics: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    parent_sha256: str = ""
    transfer: str = ""
    seconds: float = 0.0
    n_train: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    weights_sha256: str | None = None
    # how the training source read its files, so `medzoo predict` reads new files the same way (None: written
    # before these were recorded; predict then guesses from the preprocessing's channels, see docs/inference.md)
    read_grey: bool | None = None  # the source's reader converted colour files to one channel
    read_channels: int | None = None  # the source's meta['channels'] (None with read_grey set: as read)
    ignore_index: int | None = None  # segmentation: the mask code that is not a class (BCSS 0, outside ROI)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str, i: int) -> StageRecord:
        if not isinstance(d, dict):
            raise _broken(where, f"stage {i} is {d!r}, not an object")
        known, extra = _split(cls, d)
        _check(where, known.get("dataset"), str, f"stages[{i}].dataset", optional=False)
        for key in ("classes",):
            _check(where, known.get(key), list, f"stages[{i}].{key}")
        for key in ("recipe", "best", "val_metrics", "runtime", "versions", "data", "overlap"):
            _check(where, known.get(key), dict, f"stages[{i}].{key}")
        _check(where, known.get("read_grey"), bool, f"stages[{i}].read_grey")
        for key, low, high in (("read_channels", 1, MAX_CHANS), ("ignore_index", 0, MAX_CLASSES)):
            known[key] = bounded_int(where, known.get(key), f"stages[{i}].{key}", low, high)
        known = {k: v for k, v in known.items() if v is not None or k in ("data", "overlap")}
        # schema 1 recorded the dataset's free-text licence ('CC BY 3.0 (TCIA)'): read it as an id
        known["license"] = licenses.license_id(known.get("license"))
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _dump(self)

    @property
    def best_value(self) -> float | None:
        v = self.best.get("value")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class Lineage:
    arch: str
    source: SourceRecord = field(default_factory=lambda: SourceRecord(name="?"))
    stages: list[StageRecord] = field(default_factory=list)
    name: str | None = None
    timm_name: str | None = None
    task: str = "classification"
    in_chans: int = 3
    image_size: int | None = None
    key: str | None = None
    weights_sha256: str | None = None
    created: str | None = None
    evaluations: dict[str, Any] = field(default_factory=dict)  # "<dataset>-<split>" -> `medzoo evaluate` summary
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Lineage:
        """Read ``config.json["medzoo"]``; one clear line for a broken or newer lineage."""
        if not isinstance(d, dict):
            raise _broken(where, f"it is {type(d).__name__} {str(d)[:40]!r}, not an object")
        schema = d.get("schema", 1)  # files written before the field existed are schema 1
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise _broken(where, f"schema is {schema!r}")
        if schema > SCHEMA:
            raise MedzooError(f"{where} was written by a newer medzoo (lineage schema {schema}; this medzoo reads "
                              f"up to {SCHEMA}); upgrade medzoo (pip install -U medzoo)")
        known, extra = _split(cls, d)
        _check(where, known.get("arch"), str, "arch", optional=False)
        for key in ("name", "timm_name", "task", "key", "weights_sha256", "created"):
            _check(where, known.get(key), str, key)
        stages = _check(where, known.get("stages"), list, "stages") or []
        in_chans = bounded_int(where, known.get("in_chans"), "in_chans", 1, MAX_CHANS)
        size = bounded_int(where, known.get("image_size"), "image_size", 1, MAX_IMAGE_SIZE)
        evaluations = _check(where, known.get("evaluations"), dict, "evaluations") or {}
        return cls(arch=known["arch"], source=SourceRecord.from_dict(known.get("source"), where),
                   stages=[StageRecord.from_dict(s, where, i) for i, s in enumerate(stages)],
                   name=known.get("name"), timm_name=known.get("timm_name"),
                   task=known.get("task") or "classification", in_chans=in_chans or 3, image_size=size,
                   key=known.get("key"), weights_sha256=known.get("weights_sha256"), created=known.get("created"),
                   evaluations=evaluations, schema=SCHEMA, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = _dump(self)
        out["source"] = self.source.to_dict()
        out["stages"] = [s.to_dict() for s in self.stages]
        if not self.evaluations:
            out.pop("evaluations")
        out["schema"] = SCHEMA
        return out

    # -- what the rest of medzoo asks of a lineage ---------------------------------------------
    @property
    def last(self) -> StageRecord | None:
        return self.stages[-1] if self.stages else None

    @property
    def chain(self) -> list[str]:
        return [self.source.name] + [s.dataset for s in self.stages]

    def public_chain(self) -> list[str]:
        """The chain as cards, listings and catalogues show it: no local path (``file:`` weights by file name,
        path-given datasets by folder name), hf-hub: and url: sources whole."""
        return [public_source(self.source.name)] + [public_dataset(s.dataset) for s in self.stages]

    def license(self) -> str:
        """The licence the weights inherit: the most restrictive of every stage's and the source weights'
        (when the source recorded one; scratch has none)."""
        return licenses.most_restrictive([s.license for s in self.stages]
                                         + ([self.source.license] if self.source.license else []))

    def prefix(self) -> Lineage:
        """The part a child stage carries forward (source and stages), as a fresh object."""
        return Lineage(arch=self.arch, source=SourceRecord.from_dict(self.source.to_dict(), "parent"),
                       stages=[StageRecord.from_dict(s.to_dict(), "parent", i) for i, s in enumerate(self.stages)])
