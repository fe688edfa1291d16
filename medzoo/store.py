"""The local store of stage checkpoints (``$MEDZOO_HOME``, default ``~/.cache/medzoo``).

A checkpoint is a directory ``checkpoints/<name>/`` laid out like a timm Hugging Face Hub repo
(``model.safetensors`` + ``config.json``) with medzoo's lineage under ``config.json["medzoo"]``,
plus ``history.csv``, ``metrics.json`` and ``learning_curve.png``. Directories appear only complete:
they are assembled under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import stock_timm_name
from .registry import MedzooError, Ref, did_you_mean

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

def slug(text: str) -> str:
    """A name part safe for file names and unambiguous next to the '-' stage separator."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "x"


def source_suffix(source_name: str, source_tag: str) -> str:
    """How a chain's first weights show in its name; the default ImageNet weights show as nothing."""
    base, _, arg = source_name.partition(":")
    if base == "imagenet" and not arg:
        return ""
    if base == "file":
        return "." + slug(source_tag.replace(":", "_"))
    return "." + slug(source_name.replace(":", "_").replace("/", "--"))


def rename_arch(name: str, old_arch: str, new_arch: str) -> str:
    """``swin_t-medagg`` → ``unet_swin_t-medagg`` when a segmentation stage takes over a classifier's weights."""
    old, new = slug(old_arch), slug(new_arch)
    return new + name[len(old):] if name.startswith(old) else f"{new}.{name}"


def stage_name(parent_name: str, dataset: str) -> str:
    """``swin_t-medagg`` + ``inbreast`` → ``swin_t-medagg-inbreast``."""
    return f"{parent_name}-{slug(dataset)}"


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


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temporary directory into place; refuses to replace an existing one."""
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MedzooError(f"checkpoint '{final.name}' appeared while this one was being written; nothing was replaced")
    _fsync_dir(final.parent)


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
                lineage: dict) -> dict[str, Any]:
    """config.json in timm's Hub format, so plain ``timm.create_model('hf-hub:…')`` can load it."""
    base = dict(getattr(model, "pretrained_cfg", None) or {})
    size, chans = recipe["image_size"], recipe["in_chans"]
    pretrained_cfg = {k: base[k] for k in ("interpolation", "crop_mode", "first_conv", "classifier") if k in base}
    pretrained_cfg.update(tag=f"medzoo.{name}", input_size=[chans, size, size], crop_pct=1.0,
                          mean=list(tcfg.mean)[:chans] if chans == 3 else [float(np.mean(tcfg.mean))],
                          std=list(tcfg.std)[:chans] if chans == 3 else [float(np.mean(tcfg.std))],
                          num_classes=len(classes), license=_license(lineage))
    model_args: dict[str, Any] = {}
    if chans != 3:
        model_args["in_chans"] = chans
    if "img_size" in _fixed_size_args(arch_ref, size):
        model_args["img_size"] = size
    if arch_ref.spec.task == "segmentation":  # not a timm model: medzoo.load builds it from the lineage
        config = {"architecture": arch_ref.name, "library": type(model).__module__.split(".")[0],
                  "num_classes": len(classes), "label_names": list(classes),
                  "pretrained_cfg": {k: pretrained_cfg[k] for k in ("tag", "input_size", "mean", "std", "license")},
                  "medzoo": lineage}
        if getattr(model, "medzoo_init", None):  # how plain users of its library build it (the model card shows it)
            config["init"] = model.medzoo_init
        return config
    config = {"architecture": stock_timm_name(arch_ref) or arch_ref.name,
              "num_classes": len(classes), "num_features": getattr(model, "num_features", None),
              "global_pool": getattr(model, "global_pool", None) and "avg", "label_names": list(classes),
              "pretrained_cfg": pretrained_cfg, "medzoo": lineage}
    if model_args:
        config["model_args"] = model_args
    return config


def _fixed_size_args(arch_ref: Ref, size: int) -> dict:
    name = stock_timm_name(arch_ref) or ""
    default = arch_ref.spec.input_size[-1]
    return {"img_size": size} if name.startswith(("swin", "vit", "deit")) and size != default else {}


def _license(lineage: dict) -> str:
    return most_restrictive([s["license"] for s in lineage.get("stages", []) if s.get("license")])


# Weights inherit the licenses of the data they were trained on; config.json and the card name the same one.
# Hugging Face license ids medzoo can name; anything else is published as "other" with its own name.
HF_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc0-1.0", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
               "cc-by-sa-4.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
               "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nd-4.0", "odbl", "pddl", "unknown"}


def license_rank(text: str) -> int:
    """How restrictive a license is: 0 public domain … 5 custom/research-only, 6 unknown."""
    hf = hf_license(text)
    if hf == "unknown":
        return 6
    if hf == "other":
        return 5
    if "-nc-" in hf + "-":
        return 4 if ("-sa" in hf or "-nd" in hf) else 3
    if "-sa" in hf or "-nd" in hf or hf == "odbl":
        return 2
    return 0 if hf in ("cc0-1.0", "pddl") else 1


def hf_license(text: str | None) -> str:
    """A dataset's license text ('CC BY-NC 4.0', 'CC0-1.0 (generated)') as a Hugging Face license id."""
    t = re.sub(r"\(.*?\)", "", (text or "").lower()).strip()
    if not t:
        return "unknown"
    t = re.sub(r"[\s_]+", "-", t.replace("cc by", "cc-by").replace("creative commons", "cc"))
    t = re.sub(r"-+", "-", t).strip("-")
    if t in ("apache", "apache2", "apache-2"):
        t = "apache-2.0"
    return t if t in HF_LICENSES else "other"


def most_restrictive(licenses: list[str]) -> str:
    """The most restrictive of the training data licenses (the weights inherit it); 'unknown' if none."""
    return max(licenses, key=license_rank) if licenses else "unknown"


# -- reading the store --------------------------------------------------------------------------

@dataclass
class Checkpoint:
    name: str
    path: Path
    config: dict[str, Any]

    @property
    def lineage(self) -> dict[str, Any]:
        return self.config.get("medzoo", {})


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise MedzooError(f"'{path}' is not a readable medzoo checkpoint ({exc}); remove it or re-train") from None
    return Checkpoint(name=config.get("medzoo", {}).get("name", path.name), path=path, config=config)


def list_local() -> list[Checkpoint]:
    root = checkpoints_dir()
    if not root.is_dir():
        return []
    return [read_checkpoint(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
            and (p / CONFIG).is_file()]


def find_local(name: str) -> Checkpoint | None:
    path = checkpoints_dir() / name
    return read_checkpoint(path) if (path / CONFIG).is_file() else None


def get_local(name: str) -> Checkpoint:
    ckpt = find_local(name)
    if ckpt is None:
        names = [c.name for c in list_local()]
        raise MedzooError(f"no checkpoint '{name}' in {checkpoints_dir()}{did_you_mean(name, names)} "
                          "(`medzoo list weights` shows them)")
    return ckpt
