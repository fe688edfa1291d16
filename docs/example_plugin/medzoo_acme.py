"""medzoo-acme: an architecture, a dataset, a freeze policy, a weight source and a command for medzoo.

Everything medzoo-specific comes from ``medzoo.plugin``; the rest of ``medzoo`` is internal.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click
import numpy as np
import torch

from medzoo.plugin import (
    ArchSpec,
    DatasetSpec,
    DataSource,
    FreezePolicySpec,
    MedzooError,
    Record,
    SourceWeights,
    WeightSourceSpec,
    assign_splits,
    bad_input,
    block_groups,
    data_root,
    did_you_mean,
    hookimpl,
)

CLASSES = ("clear", "dots")


# -- architecture ------------------------------------------------------------------------------

class AcmeNet(torch.nn.Module):
    """A small CNN: stem, two stages, head. Top-level children become medzoo's block groups, input to output."""

    def __init__(self, num_classes: int, in_chans: int, width: int):
        super().__init__()
        self.stem = torch.nn.Conv2d(in_chans, width, 3, padding=1)
        self.stage1 = torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU())
        self.stage2 = torch.nn.Sequential(torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.stage2(self.stage1(torch.relu(self.stem(x)))).mean((2, 3)))


def build_acme_net(*, num_classes, in_chans=3, img_size=None, arg=None, width="16"):
    # img_size: AcmeNet takes any input size; arg: acme_net takes none; width arrives as text (acme_net@width=32)
    if not width.isdigit() or int(width) < 1:
        raise MedzooError(f"acme_net@width={width}: the width must be a positive integer, e.g. acme_net@width=32")
    return AcmeNet(num_classes, in_chans, int(width))


# -- dataset -----------------------------------------------------------------------------------

class AcmeDots(DataSource):
    """PNG files listed in labels.csv (file,finding,patient)."""

    def __init__(self, folder: Path, records: list[Record]):
        super().__init__("acme_dots", "classification", CLASSES, records)
        self.folder = folder

    def read(self, record):
        from PIL import Image

        path = self.folder / record.id
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("L"))
        except OSError as exc:  # one line naming the file and the fix; --skip-bad leaves the image out
            raise MedzooError(f"{path}: not a readable PNG ({exc}); re-export it or remove its row, "
                              "or pass --skip-bad") from None


def open_acme_dots(*, root=None, arg=None):
    folder = data_root("acme_dots", root)  # --data-root, $MEDZOO_DATA_ACME_DOTS or $MEDZOO_DATA/acme_dots
    table = folder / "labels.csv"
    if not table.is_file():
        raise MedzooError(f"{table} is missing; acme_dots needs labels.csv with columns file,finding,patient")
    records = []
    with table.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if row["finding"] not in CLASSES:  # raises; under --skip-bad records the row and returns
                bad_input(f"{table}:{line}", f"finding '{row['finding']}' is not one of {', '.join(CLASSES)}"
                          f"{did_you_mean(row['finding'], list(CLASSES))}")
                continue
            # label: the index of the class in CLASSES, not its name
            records.append(Record(id=row["file"], label=CLASSES.index(row["finding"]), split="train",
                                  patient=row["patient"], files=[folder / row["file"]]))
    assign_splits(records, (0.6, 0.2, 0.2), seed=0)  # by patient: no patient in two splits
    return AcmeDots(folder, records)


# -- freeze policy -----------------------------------------------------------------------------

def _count(name: str, arg: str | None, default: int) -> int:
    """A non-negative integer argument (``acme_warm_stem:2``, ``acme_ortho:7``), or a MedzooError naming it."""
    if arg is None:
        return default
    if not arg.isdigit():
        raise MedzooError(f"{name}:{arg}: the argument must be a non-negative integer, e.g. {name}:2")
    return int(arg)


def apply_warm_stem(model, arg=None, epoch=0, **ctx):
    """Stem frozen for the first N epochs, then trained at a tenth of the learning rate."""
    stem = set(block_groups(model)[0])
    frozen = epoch < _count("acme_warm_stem", arg, default=1)
    for name, p in model.named_parameters():
        p.requires_grad = not (frozen and name in stem)
    return {} if frozen else {name: 0.1 for name in stem}


# -- weight source -----------------------------------------------------------------------------

def load_acme_ortho(*, arch, arg=None):
    """Seeded orthogonal initialisation of every conv and linear weight (biases zero)."""
    if arch.spec.name != "acme_net":  # arch is a Ref: .spec (the ArchSpec), .arg, .options, .name
        raise MedzooError(f"acme_ortho gives weights for acme_net only, not '{arch.name}'")
    seed = _count("acme_ortho", arg, default=0)
    torch.manual_seed(seed)
    model = build_acme_net(num_classes=2, **arch.options)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.orthogonal_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return SourceWeights(model.state_dict(), tag=f"acme_ortho:{seed}", method="orthogonal init", license="cc0-1.0")


# -- registration ------------------------------------------------------------------------------

@hookimpl
def register_archs(register):
    register(ArchSpec(
        name="acme_net", build=build_acme_net, family="acme", description="Acme's small dot-finding CNN",
        input_size=(1, 64, 64),  # display only (`medzoo list archs`): the recipe's image_size is what trains
        options={"width": "channels of the stem (default 16)"},
    ))


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="acme_dots", open=open_acme_dots, task="classification", classes=CLASSES, modality="synthetic",
        body_part="none", license="cc0-1.0", docs="https://acme.example/medzoo-acme#acme_dots",
        description="grey PNGs with or without bright dots, listed in labels.csv (file,finding,patient)",
        recipe={"epochs": 5, "batch_size": 16, "lr": 1e-3, "image_size": 64, "freeze": "acme_warm_stem:1"},
    ))


@hookimpl
def register_freeze_policies(register):
    register(FreezePolicySpec(
        name="acme_warm_stem", apply=apply_warm_stem, check=lambda arg: _count("acme_warm_stem", arg, 1),
        description="stem frozen for the first N epochs (default 1), then trained at 0.1x the learning rate",
        takes_arg=True, arg_help="epochs", arg_required=False,
    ))


@hookimpl
def register_weight_sources(register):
    register(WeightSourceSpec(
        name="acme_ortho", load=load_acme_ortho, description="seeded orthogonal initialisation of acme_net",
        takes_arg=True, arg_help="seed", arg_required=False,
    ))


@hookimpl
def register_commands(cli):
    @cli.command("acme-dots")
    @click.argument("png", type=click.Path(exists=True, dir_okay=False))
    def acme_dots(png):
        """Count the bright pixels of one PNG (what acme_dots' 'dots' class has many of)."""
        from PIL import Image

        with Image.open(png) as im:
            click.echo(f"{png}: {int((np.asarray(im.convert('L')) > 200).sum())} bright pixels")
