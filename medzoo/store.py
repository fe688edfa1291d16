"""The local store of stage checkpoints (``$MEDZOO_HOME``, default ``~/.cache/medzoo``).

A checkpoint is a directory ``checkpoints/<name>/`` laid out like a timm Hugging Face Hub repo
(``model.safetensors`` + ``config.json``) with medzoo's lineage under ``config.json["medzoo"]``,
plus ``history.csv``, ``metrics.json`` and ``learning_curve.png``. Directories appear only complete:
they are assembled under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .lineage import MAX_CLASSES, Lineage, bounded_int
from .models import stock_timm_name
from .naming import is_path_arg, public_dataset, public_source  # noqa: F401 — store's naming API too
from .registry import MedzooError, Ref, did_you_mean, registry

CONFIG = "config.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
WEIGHTS = "model.safetensors"


def home() -> Path:
    return Path(os.environ.get("MEDZOO_HOME") or Path.home() / ".cache" / "medzoo").expanduser()


def checkpoints_dir() -> Path:
    return home() / "checkpoints"


def runs_dir() -> Path:
    """Work directories of stages in progress (resumable state)."""
    return home() / "runs"


# -- names --------------------------------------------------------------------------------------

MAX_PART = 48  # one dataset's or source's part of a checkpoint name
MAX_NAME = 180  # whole names: under the 255 bytes of a file name with room for '~<key>' and temp prefixes


def slug(text: str) -> str:
    """A name part safe for file names and unambiguous next to the '-' stage separator."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_.") or "x"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def bounded(part: str, limit: int = MAX_PART) -> str:
    """``part`` if it fits ``limit`` characters, else its head and a hash of the whole (still unique)."""
    return part if len(part) <= limit else f"{part[:limit - 9].rstrip('_.')}_{_short_hash(part)}"


def dataset_part(dataset: str, fingerprint: str = "") -> str:
    """A dataset's part of a checkpoint name; a path-given one also carries a short hash of its identity,
    so two folders both called 'images' stay apart."""
    base, _, arg = dataset.partition(":")
    if is_path_arg(arg):
        last = public_dataset(dataset).partition(":")[2]
        return f"{slug(base)}_{bounded(slug(last), MAX_PART - len(base) - 10)}_{(fingerprint or _short_hash(arg))[:8]}"
    return bounded(slug(dataset))


def source_suffix(source_name: str, source_tag: str) -> str:
    """How a chain's first weights show in its name, as the source's spec says: the default source without an
    argument as nothing; a ``named_by_hash`` one by the weights' hash in the tag (no path or URL, the same name
    for the same bytes); any other by its whole ``name:arg``."""
    base, _, arg = source_name.partition(":")
    spec = registry().entries["sources"].get(base)
    if spec is not None and spec.default and not arg:
        return ""
    if spec is not None and spec.named_by_hash:
        return "." + slug(source_tag.replace(":", "_"))
    return "." + bounded(slug(source_name.replace(":", "_").replace("/", "--")))


def rename_arch(name: str, old_arch: str, new_arch: str) -> str:
    """``swin_t-medagg`` → ``unet_swin_t-medagg`` when a segmentation stage takes over a classifier's weights."""
    old, new = slug(old_arch), slug(new_arch)
    return new + name[len(old):] if name.startswith(old) else f"{new}.{name}"


def stage_name(parent_name: str, dataset: str, fingerprint: str = "") -> str:
    """``swin_t-medagg`` + ``inbreast`` → ``swin_t-medagg-inbreast``; bounded in length."""
    return bounded(f"{parent_name}-{dataset_part(dataset, fingerprint)}", MAX_NAME)


def is_store_name(name: str) -> bool:
    """A name that can only mean a folder directly under ``checkpoints/`` (no path, no '..', not hidden)."""
    return bool(name) and name == Path(name).name and not name.startswith(".") and "\\" not in name \
        and os.sep not in name and (os.altsep or "/") not in name


# -- atomic writes ------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, save(_unshare(clean), metadata=metadata))


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied weights); copies are cheap at these sizes
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def swap_dir(tmp: Path, final: Path) -> None:
    """Move the fully written folder ``tmp`` into ``final``'s place. A folder already there is first renamed
    aside and removed only after the swap: a reader sees the old folder or the new, never a mix or none for
    long. If another process put a folder at ``final`` in between, ``tmp`` is removed, the old folder is put
    back and ``MedzooError`` says so. Callers decide whether ``final`` may be replaced at all."""
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            try:
                os.rename(old, final)
            except OSError:  # the other process's folder stays; ours was removed above: drop the old one
                shutil.rmtree(old, ignore_errors=True)
        raise MedzooError(f"'{final}' appeared while this one was being written; nothing was replaced") from None
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def new_tmp_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{name}-"))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


# -- resumable state: nested dicts of tensors and plain values, without pickle -------------------

def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _flatten(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}}
        return {"__items__": [[k, _flatten(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays / scalars (numpy RNG state)
        return {"__numpy__": obj.tolist(), "dtype": str(obj.dtype)}
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__dict__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"].items()}
    if "__items__" in obj:
        return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if "__numpy__" in obj:
        return np.asarray(obj["__numpy__"], dtype=obj["dtype"])
    return obj


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Save training state (model, optimizer, scheduler, RNG…) as safetensors + JSON structure."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors, "s")
    save_tensors(path, tensors, metadata={"structure": json.dumps(structure)})


def load_state(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        structure = json.loads(f.metadata()["structure"])
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return _unflatten(structure, tensors)


# -- the checkpoint's config.json ------------------------------------------------------------

def timm_config(model, arch_ref: Ref, classes, recipe: dict, tcfg: Any, name: str,
                lineage: Lineage) -> dict[str, Any]:
    """config.json in timm's Hub format, so plain ``timm.create_model('hf-hub:…')`` can load it."""
    base = dict(getattr(model, "pretrained_cfg", None) or {})
    size, chans = recipe["image_size"], recipe["in_chans"]
    pretrained_cfg = {k: base[k] for k in ("interpolation", "crop_mode", "first_conv", "classifier") if k in base}
    pretrained_cfg.update(tag=f"medzoo.{name}", input_size=[chans, size, size], crop_pct=1.0,
                          mean=list(tcfg.mean)[:chans] if chans == 3 else [float(np.mean(tcfg.mean))],
                          std=list(tcfg.std)[:chans] if chans == 3 else [float(np.mean(tcfg.std))],
                          num_classes=len(classes), license=lineage.license())
    model_args: dict[str, Any] = {}
    if chans != 3:
        model_args["in_chans"] = chans
    if arch_ref.spec.fixed_input_size:  # always: the spec's input_size is display-only, not the model's default
        model_args["img_size"] = size
    if arch_ref.spec.task == "segmentation":  # not a timm model: medzoo.load builds it from the lineage
        config = {"architecture": arch_ref.name, "library": type(model).__module__.split(".")[0],
                  "num_classes": len(classes), "label_names": list(classes),
                  "pretrained_cfg": {k: pretrained_cfg[k] for k in ("tag", "input_size", "mean", "std", "license")},
                  "medzoo": lineage.to_dict()}
        return config
    config = {"architecture": stock_timm_name(arch_ref) or arch_ref.name,
              "num_classes": len(classes), "num_features": getattr(model, "num_features", None),
              "global_pool": getattr(model, "global_pool", None) and "avg", "label_names": list(classes),
              "pretrained_cfg": pretrained_cfg, "medzoo": lineage.to_dict()}
    if model_args:
        config["model_args"] = model_args
    return config


# -- reading the store --------------------------------------------------------------------------

@dataclass
class Checkpoint:
    name: str
    path: Path
    config: dict[str, Any]  # config.json without its "medzoo" key, which is ``lineage``
    lineage: Lineage

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def label_names(self) -> list[str] | None:
        return self.config.get("label_names")

    def full_config(self) -> dict[str, Any]:
        """config.json as written: the timm config with the lineage under "medzoo"."""
        return {**self.config, "medzoo": self.lineage.to_dict()}


def parse_config(config: Any, where: str, *, lineage_key: str = "medzoo") -> tuple[dict[str, Any], Lineage]:
    """Check a checkpoint's config.json (bounded sizes, a readable lineage) before anything is built from it."""
    if not isinstance(config, dict):
        raise MedzooError(f"{where}: config.json is not a JSON object; re-train it or re-download it")
    if lineage_key not in config:
        raise MedzooError(f"{where}: config.json has no \"medzoo\" lineage, so it is not a medzoo checkpoint; "
                          "load it with timm, or re-export it with medzoo")
    lin = Lineage.from_dict(config[lineage_key], where)
    rest = {k: v for k, v in config.items() if k != lineage_key}
    labels = rest.get("label_names")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise MedzooError(f"{where}: config.json's label_names is {str(labels)[:60]!r}, not a list of names; "
                          "re-train it or re-download it")
    n = rest.get("num_classes", len(labels) if labels is not None else None)
    n = bounded_int(where, n, "num_classes", 0, MAX_CLASSES, optional=False)
    if labels is not None and labels and len(labels) != n:
        raise MedzooError(f"{where}: config.json has num_classes {n} but {len(labels)} label_names; "
                          "re-train it or re-download it")
    rest["num_classes"] = n
    return rest, lin


def read_checkpoint(path: Path) -> Checkpoint:
    where = f"checkpoint '{path.name}'"
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise MedzooError(f"'{path}' is not a readable medzoo checkpoint ({exc}); remove it or re-train") from None
    rest, lin = parse_config(config, where)
    return Checkpoint(name=lin.name or path.name, path=path, config=rest, lineage=lin)


def write_config(path: Path, config: dict[str, Any], lineage: Lineage) -> None:
    """The one writer of a checkpoint's config.json (atomic)."""
    atomic_write(path / CONFIG, json.dumps({**config, "medzoo": lineage.to_dict()}, indent=2, default=str))


def scan_local() -> tuple[list[Checkpoint], list[tuple[Path, str]]]:
    """Readable checkpoints, and the folders that are not (with why): one broken folder hides nothing."""
    root = checkpoints_dir()
    good: list[Checkpoint] = []
    broken: list[tuple[Path, str]] = []
    if not root.is_dir():
        return good, broken
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith(".") or not (p / CONFIG).is_file():
            continue
        try:
            good.append(read_checkpoint(p))
        except MedzooError as exc:
            broken.append((p, str(exc)))
    return good, broken


def list_local() -> list[Checkpoint]:
    return scan_local()[0]


def find_local(name: str) -> Checkpoint | None:
    """The stored checkpoint called ``name``; never a folder outside ``checkpoints/`` (no paths, no '..')."""
    if not is_store_name(name):
        return None
    path = checkpoints_dir() / name
    return read_checkpoint(path) if (path / CONFIG).is_file() else None


def get_local(name: str) -> Checkpoint:
    if not is_store_name(name):
        raise MedzooError(f"'{name}' is not a checkpoint name (names have no '/', '..' or leading '.'); "
                          "`medzoo list weights` shows them")
    ckpt = find_local(name)
    if ckpt is None:
        names = [c.name for c in list_local()]
        raise MedzooError(f"no checkpoint '{name}' in {checkpoints_dir()}{did_you_mean(name, names)} "
                          "(`medzoo list weights` shows them)")
    return ckpt
