"""Running a checkpoint on new image files: ``medzoo predict NAME PATH…`` and ``medzoo.predict(model, paths)``.

Each file is read by the reader a plugin registered for its type (``medzoo list readers``: DICOM with its VOI
LUT/window and MONOCHROME1, PNG/JPEG/TIFF through OpenCV), then goes through the last stage's preprocessing
(``PreprocessConfig`` from the lineage, run by ``DataSource.prepare``, the code that fills the training cache)
and the evaluation transform (``medzoo.zoo.transforms_for``): the input the model saw in ``medzoo evaluate``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import store
from ._version import __version__
from .cache import PreprocessConfig, parallel_map
from .data import DataSource, Record, bad_input, skipping_bad
from .registry import MedzooError, registry
from .resize import fit_pair, unfit

SIDECAR = ".medzoo.json"  # beside the CSV: what wrote it (checkpoint, weights, preprocessing) and its hash


class Predictions(list):
    """One dict per image that could be read (``path``, ``p_<class>``…, ``predicted``; ``mask`` for segmentation),
    in input order; ``skipped`` lists the files left out under ``skip_bad`` and why."""

    def __init__(self, rows: Iterable[dict[str, Any]] = (), *, classes: Sequence[str] = (), task: str = "",
                 skipped: Sequence[str] = (), checkpoint: str = ""):
        super().__init__(rows)
        self.classes, self.task, self.skipped, self.checkpoint = list(classes), task, list(skipped), checkpoint

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for row in self:
            cols += [k for k in row if k not in cols]
        return cols or ["path"]


# -- inputs -------------------------------------------------------------------------------------

def reader_for(path: Path):
    """The registered reader of ``path`` by its suffix, else one that recognises its content (suffix-less
    DICOM); None when no reader takes it."""
    readers = registry().list("readers")
    suffix = path.suffix.lower()
    for spec in readers:
        if suffix and suffix in spec.suffixes:
            return spec
    for spec in readers:
        if spec.sniff is not None and spec.sniff(path):
            return spec
    return None


def gather(paths: Sequence[str | os.PathLike], *, root: str | os.PathLike | None = None) -> list[Path]:
    """Image files from files, folders (recursive, hidden entries skipped) and CSVs of paths (a ``path``
    (or ``file``) column, else the first; relative paths against ``root``, else the CSV's folder), in the
    order given."""
    out: list[Path] = []
    if not paths:
        raise MedzooError("no input: name image files, folders or a CSV of paths")
    for item in map(Path, paths):
        if not item.exists():
            raise MedzooError(f"{item}: no such file or folder; check the path")
        if item.is_dir():
            found = []
            for folder, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    p = Path(folder) / name
                    if not name.startswith(".") and reader_for(p) is not None:
                        found.append(p)
            if not found:
                raise MedzooError(f"{item}: no image files in this folder or below (`medzoo list readers` shows "
                                  "the types read)")
            out += found
        elif item.suffix.lower() == ".csv":
            out += _csv_paths(item, root)
        else:
            out.append(item)
    return out


def _csv_paths(path: Path, root) -> list[Path]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedzooError(f"{path}: cannot read the CSV ({exc}); check the file") from None
    if not rows:
        raise MedzooError(f"{path}: the CSV is empty; list one image path per row under a 'path' header")
    header = [c.strip().lower() for c in rows[0]]
    named = next((c for c in ("path", "file") if c in header), None)  # 'file': what `medzoo data export` writes
    col = header.index(named) if named else 0
    body = rows[1:] if named or not Path(rows[0][0].strip()).suffix else rows
    base = Path(root) if root else path.parent
    out = []
    for i, row in enumerate(body, start=2 if body is not rows else 1):
        value = row[col].strip() if col < len(row) else ""
        if not value:
            raise MedzooError(f"{path}:{i}: no path in this row; fill it in or remove the row")
        p = Path(value).expanduser()
        out.append(p if p.is_absolute() else base / p)
    return out


class FilesSource(DataSource):
    """Image files as a DataSource, so ``prepare`` (the cache's code) preprocesses them, read as the training
    source read its files: ``grey`` (the reader converts colour to one channel) and ``channels``
    (``meta['channels']``) from the lineage (``read_settings``)."""

    def __init__(self, paths: Sequence[Path], task: str, classes: Sequence[str], *, grey: bool,
                 channels: int | None = None, ignore_index: int | None = None):
        records = [Record(str(p), None, "test", meta={"path": str(p)}, files=[p]) for p in paths]
        super().__init__("predict", task, classes, records, meta={"channels": channels}, ignore_index=ignore_index)
        self.grey = grey

    def read(self, record: Record) -> np.ndarray:
        path = Path(record.meta["path"])
        spec = reader_for(path)
        if spec is None:
            kinds = sorted({s for r in registry().list("readers") for s in r.suffixes})
            raise MedzooError(f"{path}: no reader for '{path.suffix or 'files without a suffix'}' (read: "
                              f"{', '.join(kinds)}); convert it, or pass --skip-bad to leave it out")
        if not path.is_file():
            raise MedzooError(f"{path}: not a file; pass --skip-bad to leave it out")
        return spec.read(path, grey=self.grey)

    def read_mask(self, record: Record):
        return None  # new images have no masks: prepare runs the steps on the image alone

    def prepare_tracked(self, record: Record, cfg: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
        """``prepare``'s image, and where its pixels came from: the named steps run with a mask of pixel indices
        (steps move a mask with the image), so a predicted mask can be put back on the file's grid."""
        img = self.read(record)
        h, w = img.shape[:2]
        where = np.arange(h * w, dtype=np.int64).reshape(h, w)
        img, moved = self.domain_steps(img, where, cfg)
        out, _ = fit_pair(img, None, cfg, channels=self.meta.get("channels"), pad_mask=self.ignore_index or 0)
        same = moved is not None and moved.shape == (h, w) and np.array_equal(moved, where)
        return out, Geometry((h, w), img.shape[:2], None if same else moved)


class Geometry(NamedTuple):
    """A file's grid as read, the grid after the named steps, and (when a step moved pixels) each post-step
    pixel's index in the file's grid; None: the steps kept every pixel in place."""

    read: tuple[int, int]
    stepped: tuple[int, int]
    moved: np.ndarray | None


def read_settings(model, cfg: PreprocessConfig | None) -> tuple[bool, int | None, int | None]:
    """``(grey, channels, ignore_index)`` as the last stage's training source read its files (recorded in the
    lineage: ``StageRecord.read_grey``…); a checkpoint written before they were guesses grey from the
    preprocessing's channels, and has no ignored mask code."""
    last = model.medzoo_lineage.last
    if last is not None and last.read_grey is not None:
        return last.read_grey, last.read_channels, last.ignore_index
    grey = (cfg is not None and cfg.channels == 1) or int(model.pretrained_cfg["input_size"][0]) == 1
    return grey, 1 if grey else None, last.ignore_index if last is not None else None


def preprocess_config(model) -> PreprocessConfig | None:
    """The last stage's cached preprocessing (None: it trained on raw images), read as evaluation reads it."""
    last = model.medzoo_lineage.last
    cfg = (last.recipe if last else {}).get("preprocess")
    return None if cfg is None else PreprocessConfig.from_dict(cfg)


# -- the model ----------------------------------------------------------------------------------

def _prepared(source: FilesSource, cfg: PreprocessConfig | None, transform, records: list[Record]):
    """``(record, tensor or None, geometry or None, error or None)`` in order, preprocessed on threads. Any
    error is caught per file (an OpenCV error on an odd channel count as much as a MedzooError), so
    ``skip_bad`` can leave the file out."""
    def one(r: Record):
        try:
            geo = None
            if cfg is None:
                img = source.read(r)
                geo = Geometry(img.shape[:2], img.shape[:2], None)
            elif source.task == "segmentation":
                img, geo = source.prepare_tracked(r, cfg)
            else:
                img = source.prepare(r, cfg)[0]
            return r, transform(img), geo, None
        except Exception as exc:  # noqa: BLE001 - reported per file through bad_input
            return r, None, None, exc

    return list(parallel_map(one, records))


def predict(model_or_name, paths: Sequence[str | os.PathLike], *, batch_size: int = 32, device: str | None = None,
            skip_bad: bool = False, root: str | os.PathLike | None = None,
            mask_dir: str | os.PathLike | None = None, saliency_dir: str | os.PathLike | None = None,
            saliency_method: str = "gradcam", overwrite: bool = False) -> Predictions:
    """Class probabilities (or, for segmentation, masks written as PNG into ``mask_dir``) for image files.

    ``model_or_name``: a model from ``medzoo.load`` or anything it accepts. ``paths``: files, folders
    (recursive) or CSVs of paths. A file that cannot be read raises one ``MedzooError`` naming it, or, with
    ``skip_bad``, is left out with a warning and listed in ``.skipped``. ``saliency_dir``: also write each
    image's map for its predicted class there (``medzoo.saliency.write_maps``: ``<stem>_saliency.png`` over the
    model's input as it saw it; ``saliency_method`` ``gradcam`` or ``scorecam``; the ``saliency`` extra).
    Masks and maps are written to temporary folders and moved into ``mask_dir`` / ``saliency_dir`` (created
    when missing) only once every input is done; a file already there is replaced only with ``overwrite``.
    """
    staged = _Staged(mask_dir, saliency_dir, overwrite=overwrite)
    try:
        preds = _predict(model_or_name, paths, batch_size=batch_size, device=device, skip_bad=skip_bad, root=root,
                         staged=staged, saliency_method=saliency_method)
        staged.check()
        staged.commit()
    finally:
        staged.clean()
    return preds


class _Staged:
    """The folders predict writes files into: a temporary sibling of each, filled during the run, then
    ``commit`` moves the files into place (``replace_masks``: the whole previous mask folder, which the caller
    checked is medzoo's, is replaced)."""

    def __init__(self, masks, maps, *, overwrite: bool, replace_masks: bool = False):
        self.final = {k: Path(v) for k, v in (("masks", masks), ("maps", maps)) if v is not None}
        for kind, folder in self.final.items():
            if folder.exists() and not folder.is_dir():
                raise MedzooError(f"{folder} is a file; name a folder for the {kind}")
        self.overwrite, self.replace_masks = overwrite, replace_masks
        self.tmp: dict[str, Path] = {}

    def folder(self, kind: str) -> Path | None:
        """The temporary folder of ``kind`` (made on first use); None when that kind is not written."""
        if kind not in self.final:
            return None
        if kind not in self.tmp:
            self.tmp[kind] = store.new_tmp_dir(self.final[kind].parent, self.final[kind].name)
        return self.tmp[kind]

    def check(self) -> None:
        """Refuse, before anything moves, to replace a file already in a destination folder."""
        for kind, tmp in self.tmp.items():
            final = self.final[kind]
            if self.overwrite or (kind == "masks" and self.replace_masks):
                continue
            clash = sorted(f.name for f in tmp.iterdir() if (final / f.name).exists())
            if clash:
                flag = "--masks" if kind == "masks" else "--saliency"
                raise MedzooError(f"{final / clash[0]} exists ({len(clash)} file(s) would be replaced); pick "
                                  f"another {flag} folder (mask_dir=/saliency_dir=), or pass --overwrite")

    def commit(self) -> None:
        for kind, tmp in list(self.tmp.items()):
            final = self.final[kind]
            if (kind == "masks" and self.replace_masks) or not final.exists():
                store.swap_dir(tmp, final)  # replaces only the previous run's masks, checked by the caller
            else:
                for f in sorted(tmp.iterdir()):
                    os.replace(f, final / f.name)
                tmp.rmdir()
            del self.tmp[kind]

    def clean(self) -> None:
        for tmp in self.tmp.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self.tmp.clear()


def _predict(model_or_name, paths, *, batch_size: int, device, skip_bad: bool, root, staged: _Staged,
             saliency_method: str) -> Predictions:
    from .devices import pick_device
    from .zoo import load, transforms_for

    if batch_size < 1:
        raise MedzooError("--batch-size must be ≥ 1")
    dev = pick_device(device)
    model = load(model_or_name, device=dev) if isinstance(model_or_name, (str, os.PathLike)) else model_or_name
    if not hasattr(model, "medzoo_lineage"):
        raise MedzooError("predict needs a model from medzoo.load (it reads the preprocessing from its lineage)")
    dev = next(model.parameters()).device
    lin = model.medzoo_lineage
    classes = list(lin.last.classes) if lin.last else []
    task = lin.task
    if task == "segmentation" and "masks" not in staged.final:
        raise MedzooError("a segmentation checkpoint writes masks: pass mask_dir= (the CLI's --masks)")
    cfg = preprocess_config(model)
    grey, channels, ignore = read_settings(model, cfg)
    source = FilesSource(gather(paths, root=root), task, classes, grey=grey, channels=channels, ignore_index=ignore)
    transform = transforms_for(model)
    saliency_dir = staged.folder("maps")
    if saliency_dir is not None:
        _check_saliency(model, source, saliency_method)
    mask_dir = staged.folder("masks") if task == "segmentation" else None
    rows: list[dict[str, Any]] = []
    with skipping_bad(skip_bad) as noted:
        skipped: list[str] = noted if noted is not None else []
        chunk = max(batch_size, 4 * batch_size)  # bounded memory: a few batches of tensors at a time
        for start in range(0, len(source.records), chunk):
            ready = []
            for r, x, geo, exc in _prepared(source, cfg, transform, source.records[start:start + chunk]):
                if exc is not None:  # raises, or warns and records it under skip_bad
                    bad_input(r.meta["path"], str(exc) if isinstance(exc, MedzooError)
                              else f"{type(exc).__name__}: {exc}")
                else:
                    ready.append((r, x, geo))
            for b in range(0, len(ready), batch_size):
                batch = ready[b:b + batch_size]
                xb = torch.stack([x for _, x, _ in batch]).to(dev)
                with torch.inference_mode():
                    out = model(xb).float().cpu()
                if saliency_dir is not None:
                    _write_saliency(model, xb, out, [r.meta["path"] for r, _, _ in batch], saliency_dir,
                                    saliency_method)
                if task == "segmentation" and mask_dir is not None:
                    rows += _mask_rows(batch, out, cfg, ignore, mask_dir, staged.final["masks"], start_index=len(rows))
                else:
                    rows += _rows(batch, out, task, classes, model)
    if not rows:
        raise MedzooError(f"no image could be read ({len(skipped)} skipped: {skipped[0] if skipped else ''}); "
                          "check the inputs")
    return Predictions(rows, classes=classes, task=task, skipped=list(skipped),
                       checkpoint=lin.name or str(model_or_name))


def _check_saliency(model, source: FilesSource, method: str) -> None:
    """Refuse, before anything runs, what would fail half-way: no library, a segmentation model, a bad method,
    or two inputs whose maps would share a file name."""
    from . import saliency

    saliency.require()
    if model.medzoo_lineage.task == "segmentation":
        raise MedzooError("saliency maps explain a class score; this is a segmentation checkpoint, whose masks are "
                          "its explanation: drop --saliency")
    if method not in saliency.METHODS:
        raise MedzooError(f"unknown saliency method '{method}'; choose one of {', '.join(saliency.METHODS)}")
    seen: dict[str, str] = {}
    for r in source.records:
        name = saliency.saliency_name(r.meta["path"])
        if name in seen:
            raise MedzooError(f"'{seen[name]}' and '{r.meta['path']}' would both write the saliency map {name}; "
                              "give inputs with distinct file names, or predict them in separate runs")
        seen[name] = r.meta["path"]


def _write_saliency(model, xb: torch.Tensor, out: torch.Tensor, paths: list[str], folder, method: str) -> None:
    """Maps for the predicted class, drawn over the model's input de-normalised (what the model saw)."""
    from . import saliency

    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.0,)), dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(cfg.get("std", (1.0,)), dtype=torch.float32).view(-1, 1, 1)
    seen = [((x.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()) for x in xb]
    targets = out.argmax(1).tolist() if model.medzoo_lineage.task != "multilabel" else None
    saliency.write_maps(model, xb, seen, paths, folder, method, targets=targets)


def _rows(batch, out: torch.Tensor, task: str, classes: list[str], model) -> list[dict]:
    probs = out.sigmoid() if task == "multilabel" else out.softmax(1)
    rows = []
    for (r, _, _), p in zip(batch, probs):
        row: dict[str, Any] = {"path": r.meta["path"]}
        row.update({f"p_{c}": float(v) for c, v in zip(classes, p.tolist())})
        if task == "multilabel":
            row["predicted"] = ";".join(c for c, v in zip(classes, p.tolist()) if v >= 0.5)
        else:
            row["predicted"] = classes[int(p.argmax())] if classes else int(p.argmax())
        row.update(decision_columns(model, p))
        rows.append(row)
    return rows


def _mask_rows(batch, out: torch.Tensor, cfg: PreprocessConfig | None, ignore: int | None, tmp: Path, final: Path,
               *, start_index: int) -> list[dict]:
    """One row per image, its class-code mask written into ``tmp`` on the file's own grid; the row names the
    file where ``commit`` puts it. ``mask_grid`` says which grid: ``input`` (the file as read), or ``steps``
    when a named step moved pixels in a way the index mask could not follow back."""
    if ignore is not None and 0 <= ignore < out.shape[1]:
        out = out.clone()
        out[:, ignore] = float("-inf")  # the ignored code ('outside ROI') is no class a pixel can be given
    rows = []
    for i, ((r, _, geo), m) in enumerate(zip(batch, out.argmax(1).numpy())):
        fill = ignore if ignore is not None else 0
        if cfg is None:  # no cache preprocessing: the transform stretched the file to the model's size
            back = unfit(m, geo.stepped, m.shape[0], "stretch", fill)
        else:
            back = unfit(m, geo.stepped, cfg.size, cfg.fit, fill)
        grid = "input"
        if geo.moved is not None:
            if geo.moved.shape == back.shape and geo.moved.min(initial=0) >= 0:
                placed = np.full(geo.read[0] * geo.read[1], fill, dtype=np.int64)
                placed[geo.moved.ravel()] = back.ravel()
                back = placed.reshape(geo.read)
            else:
                grid = "steps"
        name = _write_mask(back, tmp, start_index + i, r.meta["path"]).name
        rows.append({"path": r.meta["path"], "mask": str(final / name), "mask_grid": grid})
    return rows


def decision_columns(model, probs: torch.Tensor) -> dict[str, Any]:
    """The decision at the checkpoint's stored operating point (``medzoo.operating``; chosen on a validation
    split by ``medzoo evaluate``, read back by ``medzoo.load`` only when it was chosen for these weights), as
    the ``decision`` column of one image's row; none when the checkpoint has no operating point."""
    op = getattr(model, "medzoo_operating_point", None)
    return {} if op is None else {"decision": op.decide(probs)[0]}


def _write_mask(arr: np.ndarray, folder: Path, index: int, path: str) -> Path:
    """A class-code PNG (8-bit below 256 classes, else 16-bit)."""
    from PIL import Image

    arr = arr.astype(np.uint8) if int(arr.max(initial=0)) < 256 else arr.astype(np.uint16)
    name = f"{index:05d}-{store.slug(Path(path).stem)[:80]}.png"
    Image.fromarray(arr).save(folder / name)
    return folder / name


# -- the command's files ------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ours(out: Path) -> bool:
    """Whether ``out`` is a CSV medzoo predict wrote and nobody changed since (its sidecar holds its hash)."""
    try:
        meta = json.loads((out.parent / (out.name + SIDECAR)).read_text())
        return meta.get("csv_sha256") == _sha256(out)
    except (OSError, ValueError, AttributeError):
        return False


def _our_sidecar(path: Path) -> bool:
    """Whether ``path`` (``OUT.medzoo.json``) is a sidecar medzoo predict wrote (a user's file of that name is
    never replaced)."""
    try:
        meta = json.loads(path.read_text())
        return isinstance(meta, dict) and "csv_sha256" in meta and "medzoo" in meta
    except (OSError, ValueError):
        return False


def run(name: str, paths: Sequence[str], *, out: str | os.PathLike = "predictions.csv", masks: str | None = None,
        batch_size: int = 32, device: str | None = None, skip_bad: bool = False, root: str | None = None,
        overwrite: bool = False, saliency: str | os.PathLike | None = None,
        saliency_method: str = "gradcam") -> tuple[Path, Predictions]:
    """``medzoo predict``: predictions for ``paths`` written to the CSV ``out`` (and masks under ``masks``,
    default ``<out stem>-masks/``) and saliency maps into ``saliency``, nothing written unless every input was read
    (or skipped under ``skip_bad``). A map file already in ``saliency`` is replaced only with ``overwrite``.
    Order: CSV and sidecar to temporary files, then masks, maps, CSV and last the sidecar moved into place."""
    from .zoo import load

    out = Path(out)
    sidecar = out.parent / (out.name + SIDECAR)
    if out.is_dir():
        raise MedzooError(f"--out {out} is a folder; name the CSV file to write, e.g. {out / 'predictions.csv'}")
    if out.exists() and not overwrite and not _ours(out):
        raise MedzooError(f"{out} exists and medzoo predict did not write it (or it was edited since); pick another "
                          "--out, or pass --overwrite to replace it")
    if sidecar.exists() and not _our_sidecar(sidecar):
        raise MedzooError(f"{sidecar} exists and medzoo predict did not write it; move it away or pick another --out "
                          "(predict writes its record of the run there)")
    model = load(name, device=_dev(device))
    mask_final = None
    if model.medzoo_lineage.task == "segmentation":
        mask_final = Path(masks) if masks else out.with_name(out.stem + "-masks")
        if mask_final.exists() and not _our_masks(out, mask_final):
            raise MedzooError(f"{mask_final} exists and is not a mask folder medzoo predict wrote; "
                              "pick another --masks")
    staged = _Staged(mask_final, saliency, overwrite=overwrite, replace_masks=True)
    pending: list[Path] = []
    try:
        preds = _predict(model, paths, batch_size=batch_size, device=None, skip_bad=skip_bad, root=root,
                         staged=staged, saliency_method=saliency_method)
        staged.check()
        text = to_csv(preds)
        lin = model.medzoo_lineage
        cfg = preprocess_config(model)
        meta = json.dumps({
            "csv_sha256": hashlib.sha256(text.encode()).hexdigest(), "checkpoint": preds.checkpoint,
            "origin": model.medzoo_origin, "weights_sha256": lin.weights_sha256,
            "preprocess": cfg.to_dict() if cfg else None, "image_size": lin.image_size, "n_images": len(preds),
            "skipped": preds.skipped, "masks": str(mask_final) if mask_final else None,
            "mask_grids": sorted({r["mask_grid"] for r in preds}) if mask_final else [],
            "operating_point": _op_summary(model),
            "mask_files": sorted(Path(r["mask"]).name for r in preds) if mask_final else [],
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "medzoo": __version__}, indent=2)
        pending = [_temp_beside(out, text), _temp_beside(sidecar, meta)]
        staged.commit()
        os.replace(pending[0], out)
        os.replace(pending[1], sidecar)  # last: a sidecar names only what is in place
        pending = []
    finally:
        staged.clean()
        for p in pending:
            p.unlink(missing_ok=True)
    return out, preds


def _temp_beside(path: Path, text: str) -> Path:
    """``text`` in a temporary file in ``path``'s folder (same file system: ``os.replace`` moves it whole)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    return Path(tmp)


def _op_summary(model) -> dict[str, Any] | None:
    """What the ``decision`` column applied: the thresholds, the rule and where they were chosen."""
    op = getattr(model, "medzoo_operating_point", None)
    if op is None:
        return None
    return {"thresholds": op.thresholds, "rule": op.rule, "target": op.target, "kind": op.kind,
            "chosen_on": f"{op.dataset}/{op.split}"}


def _dev(device):
    from .devices import pick_device

    return pick_device(device)


def _our_masks(out: Path, folder: Path) -> bool:
    """A mask folder is medzoo's when the sidecar of a CSV of ours names it and lists every file in it."""
    try:
        meta = json.loads((out.parent / (out.name + SIDECAR)).read_text())
        return Path(meta["masks"]) == folder and set(os.listdir(folder)) <= set(meta["mask_files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def to_csv(preds: Predictions) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=preds.columns)
    w.writeheader()
    for row in preds:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()
