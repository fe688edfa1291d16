"""Your own data: ``imagefolder:<path>`` (class sub-folders), ``csv:<file>`` (path, label[, patient_id][, split])
and ``dicom:<folder>`` (DICOM files with a labels.csv); plus ``medzoo data check`` and ``medzoo data cache``."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from medzoo.plugin import (
    DATA_ROOT_HELP,
    SPLITS,
    DatasetSpec,
    MedzooError,
    MedzooWarning,
    Record,
    assign_splits,
    bad_input,
    check_leakage,
    hookimpl,
    parse_data_roots,
    root_for,
    skipping_bad,
)

from .imaging import (
    FileSource,
    dicom_header,
    image_names,
    is_dicom,
    read_csv_rows,
    recipe,
)

GENERIC_RECIPE = recipe(preprocess={"size": 256})


def _existing(path: str | None, what: str, kind: str) -> Path:
    if not path:
        raise MedzooError(f"{kind} needs a path: {kind}:<{what}>")
    p = Path(path).expanduser()
    if not p.exists():
        raise MedzooError(f"{kind}: {p} does not exist; give the {what}")
    return p


def open_imagefolder(*, root=None, arg=None) -> FileSource:
    top = _existing(arg or (str(root) if root else None), "folder with one sub-folder per class", "imagefolder")
    split_dirs = [s for s in SPLITS if (top / s).is_dir()]
    layout = [(s, top / s) for s in split_dirs] if split_dirs else [(None, top)]
    classes = sorted({d.name for _, base in layout for d in base.iterdir()
                      if d.is_dir() and not d.name.startswith(".")})
    warn_near_duplicate_classes(classes, str(top))
    if not classes:
        raise MedzooError(f"imagefolder: {top} has no class sub-folders; put each class's images in <folder>/<class>/")
    records = []
    for split, base in layout:
        for c in classes:
            folder = base / c
            names = image_names(folder) if folder.is_dir() else []
            if not names and split in (None, "train"):
                raise MedzooError(f"imagefolder: class folder {folder} has no images; remove it or add images")
            prefix = f"{split}/{c}/" if split else f"{c}/"
            for name in names:
                rel = prefix + name
                records.append(Record(rel, classes.index(c), split or "train", None, meta={"path": rel}))
    if not split_dirs:
        assign_splits(records, seed=0)  # no patient ids: each image is its own patient
    elif "val" not in split_dirs:
        assign_splits(records, (0.9, 0.1, 0.0), seed=0, only=("train",))
    return FileSource(f"imagefolder:{top}", "classification", classes, records, root=top)


def _labelled_rows(table: Path) -> tuple[list[str], list[Record]]:
    """Rows of a labels CSV (path or file, label[, patient_id][, split]) as records, paths relative to it."""
    rows = read_csv_rows(table)
    if not rows:
        raise MedzooError(f"{table}: no rows; expected a header path,label[,patient_id][,split] and one row per image")
    cols = set(rows[0])
    path_col = next((c for c in ("path", "file", "filename", "image") if c in cols), None)
    if path_col is None or "label" not in cols:
        raise MedzooError(f"{table}: needs columns 'path' and 'label' (has {', '.join(sorted(cols))})")
    classes = sorted({r["label"] for r in rows if r["label"]})
    warn_near_duplicate_classes(classes, str(table))
    records = []
    for line, row in enumerate(rows, start=2):
        rel = row[path_col]
        if not row["label"]:
            bad_input(f"{table}:{line}", "has no label")
            continue
        if not (table.parent / rel).is_file():
            bad_input(f"{table}:{line}", f"references {table.parent / rel}, which does not exist")
            continue
        split = row.get("split", "").lower() or "train"
        if split not in SPLITS:
            bad_input(f"{table}:{line}", f"unknown split {split!r} (use train, val or test)")
            continue
        records.append(Record(rel, classes.index(row["label"]), split, row.get("patient_id") or None,
                              meta={"path": rel}))
    if not records:
        raise MedzooError(f"{table}: no usable rows; see the errors above or drop --skip-bad")
    if "split" not in cols:
        assign_splits(records, seed=0)
    else:
        check_leakage(records, str(table))
    return classes, records


def read_all(source, skip_bad: bool) -> list[str]:
    """Read every image (and mask) of ``source``; the problems of the bad ones, or an error at the first
    when ``skip_bad`` is off (as training would fail on it)."""
    from tqdm.auto import tqdm

    bad = []
    with skipping_bad(skip_bad) as skipped:
        for r in tqdm(source.records, desc=f"reading {source.name}", unit="img", leave=False, disable=None):
            try:
                source.read(r)
                if source.task == "segmentation":
                    source.read_mask(r)
            except MedzooError as exc:
                bad_input(r.id, str(exc))
        bad = list(skipped or [])
    return bad


def warn_near_duplicate_classes(classes: list[str], where: str) -> None:
    """'A' next to 'a' (or 'Benign' next to 'benign ') silently makes one more class: say so."""
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(c.strip().casefold(), []).append(c)
    for same in (g for g in groups.values() if len(g) > 1):
        warnings.warn(f"{where}: labels {', '.join(repr(c) for c in same)} differ only by case or surrounding "
                      f"spaces and count as {len(same)} classes; write them the same way if they are one class",
                      MedzooWarning, stacklevel=2)


def open_csv(*, root=None, arg=None) -> FileSource:
    table = _existing(arg, "file.csv", "csv")
    classes, records = _labelled_rows(table)
    return FileSource(f"csv:{table}", "classification", classes, records, root=table.parent)


def open_dicom(*, root=None, arg=None) -> FileSource:
    folder = _existing(arg or (str(root) if root else None), "folder with DICOM files and labels.csv", "dicom")
    table = folder / "labels.csv"
    if not table.is_file():
        raise MedzooError(f"dicom: no {table}; write one with columns path,label[,patient_id][,split]")
    classes, records = _labelled_rows(table)
    for r in records:
        if not is_dicom(folder / r.id):
            raise MedzooError(f"{folder / r.id}: not a DICOM file (no DICM header); use csv:{table} for other images")
    if not any(r.patient for r in records):  # no patient column: use the PatientID tag, then re-split by it
        for r in records:
            r.patient = str(dicom_header(folder / r.id).get("PatientID", "")) or None
        if "split" not in read_csv_rows(table)[0]:
            assign_splits(records, seed=0)
    return FileSource(f"dicom:{folder}", "classification", classes, records, root=folder, grey=True)


# -- medzoo data check / cache / download ---------------------------------------------------------------

def download_root(base: str, root: str | None) -> Path:
    """Where ``data download`` writes: the folder ``data check`` and training read."""
    from medzoo.plugin import data_root

    try:
        path = data_root(base, root, must_exist=False)
    except MedzooError:
        raise MedzooError(f"nowhere to download '{base}' to: set MEDZOO_DATA (it goes to $MEDZOO_DATA/{base}) or "
                          f"pass --data-root {base}=PATH") from None
    return path  # created by the download itself, so a refused argument leaves no empty folder


def check_layout(name: str, root: str | None) -> None:
    """What of the dataset's expected layout is missing, listed before opening it (whose error names only the
    first problem); nothing when the plugin declares no layout or finds no folder at all (open says so)."""
    from medzoo.plugin import registry

    ref = registry().resolve("datasets", name)
    if ref.spec.missing is None:
        return
    try:
        missing = ref.spec.missing(root=root, arg=ref.arg)
    except MedzooError:
        return
    if missing:
        click.echo(f"{name}: missing:")
        for item in missing:
            click.echo(f"  {item}")
        raise MedzooError(f"{name}: {len(missing)} expected item(s) missing (listed above); "
                          f"`medzoo data download {name}` shows how to get them")


def data_group(cli) -> click.Group:
    """The ``medzoo data`` group, created by whichever data plugin comes first."""
    if "data" not in cli.commands:
        @cli.group("data")
        def data():
            """Download, check, cache and build datasets."""
    return cli.commands["data"]


@hookimpl
def register_commands(cli):
    group = data_group(cli)

    @group.command("check")
    @click.argument("name")
    @click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
    @click.option("--skip-bad", is_flag=True, help="List and count bad rows and files instead of failing on the first.")
    @click.option("--quick", is_flag=True, help="Check labels, splits and classes only; don't read every image.")
    @click.option("--verify", is_flag=True,
                  help="Re-hash every file, even those whose size and mtime are unchanged (cp -p, rsync -a, unzip).")
    def check(name, data_roots, skip_bad, quick, verify):
        """Open a dataset and read every image: images per split and class, patients, leakage check, bad
        files, fingerprint. Fails as training would (one class, no training images, a bad file)."""
        from collections import Counter

        from medzoo.plugin import open_dataset

        root = root_for(parse_data_roots(data_roots), name)
        check_layout(name, root)
        src = open_dataset(name, root, skip_bad=skip_bad, trainable=True)
        if verify:
            changed = src.verify()
            for path in changed:
                click.echo(f"changed: {path} (same size and mtime, different bytes)")
            click.echo(f"verified: re-hashed every file; {len(changed)} changed under an unchanged size and mtime"
                       + ("; the next train sees the new content" if changed else ""))
        bad_files = [] if quick else read_all(src, skip_bad)
        click.echo(f"{src.name}: {len(src.records)} images, task {src.task}, fingerprint {src.fingerprint()[:16]}")
        for split in SPLITS:
            rows = src.split(split)
            patients = len({r.patient for r in rows if r.patient})
            if src.task == "classification":
                counts = Counter(src.classes[r.label] for r in rows)
                detail = ", ".join(f"{c}: {counts.get(c, 0)}" for c in src.classes)
            else:
                detail = ""
            click.echo(f"  {split}: {len(rows)} images, {patients} patients  {detail}".rstrip())
        rows = src.meta.get("skipped", [])
        if rows:
            click.echo(f"  {len(rows)} bad row(s) or file(s) left out by the reader:")
            for problem in rows:
                click.echo(f"    {problem}")
        if bad_files:
            click.echo(f"  {len(bad_files)} unreadable image(s) of {len(src.records)}, left out with --skip-bad:")
            for problem in bad_files:
                click.echo(f"    {problem}")
        # what a reader found questionable but still reads (medmnist: an npz that is not the release file)
        for problem in src.meta.get("warnings", []):
            click.echo(f"medzoo: warning: {problem}", err=True)

    @group.command("download")
    @click.argument("names", nargs=-1, required=True)
    @click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
    def download(names, data_roots):
        """Download open datasets (medmnist:FLAG[_SIZE]) into the folder training reads ($MEDZOO_DATA/<name>):
        resumable, checked against the published md5. For a dataset behind a licence form or portal, print the
        steps and the expected layout (and exit 1: it cannot be downloaded for you)."""
        from medzoo.plugin import registry

        roots, manual = parse_data_roots(data_roots), []
        for name in names:
            ref = registry().resolve("datasets", name)
            spec = ref.spec
            if spec.download is None:
                if not spec.manual_steps:
                    raise MedzooError(f"'{name}' has nothing to download: {spec.description}")
                click.echo(f"{spec.name}: medzoo cannot download it for you; get it like this:\n"
                           f"{spec.manual_steps.strip()}\n"
                           f"The data root is --data-root, MEDZOO_DATA_<NAME> or $MEDZOO_DATA/<name> "
                           f"(docs/datasets/README.md). Then run `medzoo data check {name}`.\n")
                manual.append(name)
                continue
            click.echo(spec.download(root=download_root(spec.name, root_for(roots, name)), arg=ref.arg))
        if manual:
            raise MedzooError(f"{', '.join(manual)}: behind a licence form or portal, not downloadable by medzoo; "
                              "follow the steps above")

    @group.command("cache")
    @click.argument("name")
    @click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
    @click.option("--size", type=int, help="Side of the cached square images (default: the dataset's recipe).")
    @click.option("--clahe", type=float, help="CLAHE clip limit, 0 for none.")
    @click.option("--skip-bad", is_flag=True)
    def cache(name, data_roots, size, clahe, skip_bad):
        """Preprocess a dataset once into the memory-mapped cache (as training would)."""
        from medzoo.plugin import PreprocessConfig, open_dataset, registry

        cfg = dict(registry().resolve("datasets", name).spec.recipe.get("preprocess", {}))
        cfg.update({k: v for k, v in (("size", size), ("clahe", clahe)) if v is not None})
        src = open_dataset(name, root_for(parse_data_roots(data_roots), name),
                           preprocess=PreprocessConfig.from_dict(cfg), skip_bad=skip_bad)
        click.echo(f"{src.name}: {len(src.records)} images cached in {src.meta['cache']}")


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="imagefolder", open=open_imagefolder, docs="docs/datasets/imagefolder.md",
        description="a folder with one sub-folder of images per class (optionally inside train/val/test)",
        takes_arg=True, arg_help="folder", recipe=GENERIC_RECIPE))
    register(DatasetSpec(
        name="csv", open=open_csv, docs="docs/datasets/csv.md",
        description="a CSV with columns path,label[,patient_id][,split]; paths relative to the CSV",
        takes_arg=True, arg_help="file.csv", recipe=GENERIC_RECIPE))
    register(DatasetSpec(
        name="dicom", open=open_dicom, docs="docs/datasets/dicom.md",
        description="a folder of DICOM files with labels.csv (path,label[,patient_id][,split]); patients "
                    "from the PatientID tag when the CSV has none",
        takes_arg=True, arg_help="folder", recipe=GENERIC_RECIPE))
