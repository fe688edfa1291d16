"""The data model of an experiment grid: its targets, the grid, its cells, and a cell's stored result.

Shared by ``medzoo.experiment`` (which reads a grid and runs its cells) and ``medzoo.report`` (which reads an
experiment folder back), so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Target:
    label: str  # the report's name for it; two targets may fine-tune on one dataset with other settings
    dataset: str
    archs: list[str]
    set: dict[str, Any] = field(default_factory=dict)  # recipe keys for the target stage only
    metrics: list[str] = field(default_factory=list)
    task: str = "classification"
    own_metrics: bool = False  # metrics given in the target itself (else the grid's, or the task's defaults)


@dataclass
class Grid:
    name: str
    chains: dict[str, list[str]]  # chain name -> the stages before the target (a weight source first)
    baseline: str
    targets: list[Target]
    seeds: list[int]
    recipe: dict[str, dict[str, Any]] = field(default_factory=dict)  # section ('defaults' or a dataset) -> keys
    description: str = ""
    reference: str = ""
    split: str = "test"
    bootstrap: int = 1000
    runtime: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cell:
    id: str
    target: str
    dataset: str
    arch: str
    chain: str
    stages: list[str]
    seed: int
    overrides: dict[str, dict[str, Any]]

    def spec_hash(self, grid: Grid) -> str:
        blob = json.dumps({"arch": self.arch, "stages": self.stages, "seed": self.seed, "overrides": self.overrides,
                           "split": grid.split, "bootstrap": grid.bootstrap}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_path(out: Path, cell_id: str) -> Path:
    return out / "cells" / f"{cell_id}.json"


def read_cell(out: Path, cell: Cell, grid: Grid) -> dict[str, Any] | None:
    """The stored result of a cell if it finished with the cell's current spec; else None (run it)."""
    try:
        rec = json.loads(cell_path(out, cell.id).read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("spec_hash") == cell.spec_hash(grid) else None
