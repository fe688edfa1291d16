"""Loading medzoo weights in one line: ``medzoo.load(name)`` and ``medzoo.transforms_for(model)``.

A name resolves, in order, to a checkpoint in the local store, an entry of the catalogue of published
medzoo weights, ``hf-hub:ORG/REPO[@rev]``, or a local directory / ``.safetensors`` file laid out like a
timm Hub repo (``model.safetensors`` + ``config.json`` with medzoo's lineage under ``"medzoo"``).
Weights are only ever read from safetensors (recognised by their header), after their sha256 matched
every hash the metadata records (``medzoo.weights``). A name is a store name only when it is a plain
name (no '/', no '..'): anything else is a path, and only an existing one.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import data as mzdata
from . import models, store
from . import weights as weights_reader
from .hublayout import MEDZOO_JSON, foreign_hint
from .lineage import MAX_CHANS, MAX_CLASSES, Lineage
from .registry import MedzooError, did_you_mean, registry

HF_PREFIX = "hf-hub:"
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


@dataclass
class Located:
    """Where a model's files are once found (downloaded if it lives on the Hub)."""

    config: dict[str, Any]  # config.json without the lineage
    lineage: Lineage
    weights: Path | None  # None when only the config was fetched (pretrained=False)
    origin: str  # how to name it in messages and in ``model.medzoo_origin``
    expected_sha256: tuple[str, ...] = ()  # hashes the weights must have (config and catalogue)


# -- the catalogue ------------------------------------------------------------------------------

def catalogue() -> dict[str, dict[str, Any]]:
    """Published medzoo weights: the packaged ``catalogue.json``, then files named by ``MEDZOO_CATALOGUE``
    (``os.pathsep``-separated; later files add or replace entries, e.g. a lab's own list)."""
    text = resources.files("medzoo").joinpath("catalogue.json").read_text()
    entries = _parse_catalogue(text, "medzoo/catalogue.json")
    for path in filter(None, os.environ.get("MEDZOO_CATALOGUE", "").split(os.pathsep)):
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            raise MedzooError(f"cannot read the catalogue '{path}' named by MEDZOO_CATALOGUE ({exc.strerror}); "
                              "fix or unset MEDZOO_CATALOGUE") from None
        entries.update(_parse_catalogue(text, path))
    return entries


def _parse_catalogue(text: str, where: str) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise MedzooError(f"catalogue '{where}' is not valid JSON ({exc}); fix the file") from None
    models_ = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models_, dict):
        raise MedzooError(f"catalogue '{where}' has no \"models\" object; see docs/zoo.md for its format")
    for name, entry in models_.items():
        if not isinstance(entry, dict) or "/" not in str(entry.get("repo_id", "")):
            raise MedzooError(f"catalogue '{where}': entry '{name}' needs \"repo_id\": \"ORG/REPO\"; fix the file")
    return dict(models_)


# -- finding the files --------------------------------------------------------------------------

def locate(name_or_path: str | os.PathLike, *, revision: str | None = None, weights: bool = True) -> Located:
    """Find a model's config (and weights, unless ``weights=False``) without loading anything."""
    name = os.fspath(name_or_path)
    if not name.strip():
        raise MedzooError("empty model name; `medzoo list weights` shows what can be loaded")
    if name.startswith(HF_PREFIX):
        repo, _, rev = name[len(HF_PREFIX):].partition("@")
        return from_hub(repo, revision or rev or None, weights=weights)
    local = store.find_local(name)
    if local is not None:
        if revision:
            raise MedzooError(f"'{name}' is a local checkpoint, which has no revisions; drop revision=")
        return _located(local.config, local.lineage, local.path / store.WEIGHTS, f"local checkpoint '{name}'")
    entry = catalogue().get(name)
    if entry is not None:
        found = from_hub(entry["repo_id"], revision or entry.get("revision"), weights=weights)
        pinned = entry.get("weights_sha256")
        if pinned and not revision:  # the catalogue's hash ships with medzoo, independent of the repo
            found.expected_sha256 += (pinned,)
        return found
    path = Path(name).expanduser()
    if revision and path.exists():
        raise MedzooError(f"'{name}' is a local path, which has no revisions; drop revision=")
    if path.is_dir():
        return _from_dir(path, f"'{path}'")
    if path.is_file():
        if path.suffix != ".safetensors":
            models.load_safetensors(path)  # refuses pickles with the explanation; else falls through
        return _from_dir(path.parent, f"'{path}'", weights_file=path)
    names = [c.name for c in store.list_local()] + list(catalogue())
    raise MedzooError(f"no model '{name}' in the local store, the catalogue, or on disk{did_you_mean(name, names)}; "
                      "`medzoo list weights` shows what can be loaded (or write hf-hub:ORG/REPO)")


def _from_dir(path: Path, origin: str, weights_file: Path | None = None) -> Located:
    config_path = path / store.CONFIG
    weights = weights_file or path / store.WEIGHTS
    if not weights.is_file():
        pickles = [n for n in PICKLE_NAMES if (path / n).is_file()]
        if pickles:
            raise MedzooError(f"{origin} holds only pickled weights ({pickles[0]}), which medzoo never loads "
                              "(unpickling can run code); convert them to model.safetensors in a trusted session")
        raise MedzooError(f"{origin} has no {store.WEIGHTS}; point at a medzoo checkpoint directory or file")
    if not config_path.is_file():
        raise MedzooError(f"{origin} has no {store.CONFIG} beside the weights, so its architecture is unknown; "
                          "keep the config.json that came with it")
    config = _read_config(config_path, origin)
    if "medzoo" not in config and (path / MEDZOO_JSON).is_file():  # a layout whose library owns config.json
        config = _read_config(path / MEDZOO_JSON, origin)
    rest, lin = store.parse_config(config, origin)
    return _located(rest, lin, weights, origin)


def _located(config: dict[str, Any], lin: Lineage, weights: Path | None, origin: str) -> Located:
    return Located(config, lin, weights, origin, (lin.weights_sha256,) if lin.weights_sha256 else ())


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MedzooError(f"{where}: {path.name} is not readable JSON ({exc}); re-download or re-export it") from None
    if not isinstance(config, dict):
        raise MedzooError(f"{where}: {path.name} is not a JSON object; re-download or re-export it")
    return config


def from_hub(repo_id: str, revision: str | None = None, *, weights: bool = True) -> Located:
    """Fetch ``config.json`` (and ``model.safetensors``) of a Hub repo through the Hugging Face cache.

    huggingface_hub's own configuration applies: ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_CACHE``,
    ``HF_HUB_OFFLINE=1`` (then only the cache is read).
    """
    from huggingface_hub import hf_hub_download

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise MedzooError(f"'{HF_PREFIX}{repo_id}' is not a Hub repo id; write it as hf-hub:ORG/REPO[@revision]")
    where = f"{HF_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    config_path = _hub_call(lambda: hf_hub_download(repo_id, store.CONFIG, revision=revision), where, store.CONFIG)
    commit = Path(config_path).parent.name  # the cache names snapshot folders by commit hash
    config = _read_config(Path(config_path), where)
    if "medzoo" not in config:  # a layout whose library owns config.json keeps medzoo's in medzoo.json
        hint = foreign_hint(config, repo_id, registry().list("archs"))
        path = _hub_call(lambda: hf_hub_download(repo_id, MEDZOO_JSON, revision=commit), where, MEDZOO_JSON, hint)
        config = _read_config(Path(path), where)
        if "medzoo" not in config:
            raise MedzooError(f"{where} is not a medzoo model (neither config.json nor {MEDZOO_JSON} holds a "
                              f"\"medzoo\" lineage){hint}")
    rest, lin = store.parse_config(config, where)
    weights_path = None
    if weights:
        weights_path = Path(_hub_call(lambda: hf_hub_download(repo_id, store.WEIGHTS, revision=commit),
                                      where, store.WEIGHTS))
    return _located(rest, lin, weights_path, f"{HF_PREFIX}{repo_id}@{commit}")


def _hub_call(fn, where: str, filename: str, hint: str = ""):
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return fn()
    except RepositoryNotFoundError:
        raise MedzooError(f"{where}: no such repo (or it is private: set HF_TOKEN or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise MedzooError(f"{where}: no such revision; use a branch, tag or commit hash the repo has") from None
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: catch it first
        raise MedzooError(f"{where}: {filename} is not in the Hugging Face cache and the Hub cannot be reached "
                          "(offline?); load it once online, or unset HF_HUB_OFFLINE") from None
    except EntryNotFoundError:
        if filename == MEDZOO_JSON:
            hint = hint or "; load it with the library that wrote it"
            raise MedzooError(f"{where} is not a medzoo model (its config.json has no \"medzoo\" lineage and the "
                              f"repo has no {MEDZOO_JSON}){hint}") from None
        hint = (" (medzoo loads only safetensors; a repo with pytorch_model.bin holds pickled weights)"
                if filename == store.WEIGHTS else "")
        raise MedzooError(f"{where} has no {filename}{hint}; publish it with `medzoo publish`") from None
    except (HfHubHTTPError, OSError) as exc:
        raise MedzooError(f"{where}: download of {filename} failed ({_first_line(exc)}); retry, or check "
                          "HF_ENDPOINT and your connection") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# -- verified weights ---------------------------------------------------------------------------

def read_weights(found: Located) -> tuple[dict[str, Any], str]:
    """The weights' tensors and sha256, under medzoo's one policy (``medzoo.weights``): refused when they
    differ from any hash the metadata (config or catalogue) records, loaded with a warning when none is."""
    if found.weights is None:
        raise MedzooError(f"{found.origin}: weights were not fetched")
    return weights_reader.read(found.weights, found.expected_sha256, found.origin)


# -- building -----------------------------------------------------------------------------------

def load(name_or_path: str | os.PathLike, *, num_classes: int | None = None, in_chans: int | None = None,
         features_only: bool = False, pretrained: bool = True, device: Any = None, revision: str | None = None):
    """A medzoo model in eval mode, with ``pretrained_cfg`` and ``medzoo_lineage`` attributes.

    ``num_classes`` other than the stored one gives a new (randomly initialised) head; ``in_chans`` other
    than the stored one adapts the first convolution (1 channel = the sum over RGB, as timm does);
    ``features_only`` returns timm's feature extractor; ``pretrained=False`` only builds the architecture.
    """
    found = locate(name_or_path, revision=revision, weights=pretrained)
    lin, config = found.lineage, found.config
    stored_classes = config["num_classes"]  # checked and bounded by store.parse_config
    stored_chans = lin.in_chans
    classes = stored_classes if num_classes is None else int(num_classes)
    chans = stored_chans if in_chans is None else int(in_chans)
    if not 0 <= classes <= MAX_CLASSES or not 1 <= chans <= MAX_CHANS:
        raise MedzooError(f"num_classes={num_classes}, in_chans={in_chans}: use num_classes in 0..{MAX_CLASSES} "
                          f"and in_chans in 1..{MAX_CHANS}")
    state, sha = None, None
    if features_only:
        state, sha = read_weights(found) if pretrained else (None, None)
        model = _features_model(found, state, chans)
    else:
        ref = registry().resolve("archs", lin.arch)
        # hash and read the weights on a thread while the architecture is built (both mostly outside the
        # GIL): the check costs ~nothing on top of timm's own create_model + load (bench/load.py)
        with ThreadPoolExecutor(1, thread_name_prefix="medzoo-load") as pool:
            weights = pool.submit(read_weights, found) if pretrained else None
            if ref.spec.rebuild is not None:  # the architecture rebuilds itself from its stored config
                model = ref.spec.rebuild(config=config, lineage=lin, num_classes=classes, in_chans=chans)
            else:
                model = models.build(ref, num_classes=classes, in_chans=chans, img_size=lin.image_size)
            if weights is not None:
                state, sha = weights.result()  # raises here on a hash mismatch: nothing was loaded
        if state is not None:
            if classes == stored_classes and chans == stored_chans:
                model.load_state_dict(state, strict=True)
            else:
                models.transfer_weights(model, state, keep_head=classes == stored_classes, origin=found.origin)
    pcfg = dict(config.get("pretrained_cfg") or {})
    size = lin.image_size or (pcfg.get("input_size") or [3, 224, 224])[-1]
    pcfg.update(input_size=[chans, size, size], num_classes=0 if features_only else classes)
    if sha:
        pcfg["weights_sha256"] = sha
    model.pretrained_cfg = pcfg
    model.medzoo_lineage = lin
    model.medzoo_origin = found.origin
    from .operating import read as read_operating_point

    # the threshold chosen on validation for these weights (None if none, or chosen for other weights); a
    # broken one is never applied, but the verified weights still load
    try:
        model.medzoo_operating_point = read_operating_point(config, found.origin, weights_sha256=lin.weights_sha256)
    except MedzooError as exc:
        weights_reader.warn(f"{exc} (loaded without an operating point)")
        model.medzoo_operating_point = None
    if device is not None:
        model.to(device)
    return model.eval()


def _features_model(found: Located, state: dict[str, Any] | None, chans: int):
    """timm's own feature extractor, so the output format (e.g. Swin's NHWC) is what timm users expect."""
    import timm

    lin, config = found.lineage, found.config
    ref = registry().resolve("archs", lin.arch)
    timm_name = models.stock_timm_name(ref)
    if timm_name is None or ref.options:
        raise MedzooError(f"features_only needs a stock timm architecture, and {found.origin} is a "
                          f"'{lin.arch}'; load the full model and take its layers instead")
    kwargs = {k: v for k, v in (config.get("model_args") or {}).items() if k != "in_chans"}
    if state is None:
        return timm.create_model(timm_name, features_only=True, pretrained=False, in_chans=chans, **kwargs)
    # timm reads the file itself (safetensors) after read_weights verified its hash; it adapts the first conv
    overlay = dict(config.get("pretrained_cfg") or {}, file=str(found.weights))
    overlay.pop("hf_hub_id", None)
    return timm.create_model(timm_name, features_only=True, pretrained=True, in_chans=chans,
                             pretrained_cfg_overlay=overlay, **kwargs)


def transform_config(model, *, train: bool = False) -> mzdata.TransformConfig:
    """The trainer's TransformConfig for a model from ``medzoo.load`` (also used with image+mask pairs)."""
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" not in pcfg:
        raise MedzooError("this model has no pretrained_cfg['input_size']; pass a model from medzoo.load")
    chans, size = int(pcfg["input_size"][0]), int(pcfg["input_size"][-1])
    return mzdata.TransformConfig(image_size=size, augment="light" if train else "none",
                                  mean=tuple(pcfg.get("mean", (0.485, 0.456, 0.406))),
                                  std=tuple(pcfg.get("std", (0.229, 0.224, 0.225))), in_chans=chans)


def transforms_for(model, *, train: bool = False):
    """The preprocessing a medzoo model was trained with: the trainer's own transform (a square resize to
    the training size, then normalisation), not timm's resize-and-center-crop, which crops non-square
    images that the trainer never cropped.

    The returned callable takes a PIL image, a numpy array (H×W or H×W×C; uint8, uint16 or float in
    [0, 1]) or a C×H×W float tensor in [0, 1], and returns a normalised C×H×W tensor.
    """
    import numpy as np
    import torch

    cfg = transform_config(model, train=train)
    chans = cfg.in_chans
    transform = mzdata.build_transform(cfg, train)

    def apply(image):
        if isinstance(image, torch.Tensor):  # C×H×W, the layout to_tensor produces: back to H×W×C for it
            image = image.detach().cpu().float().permute(1, 2, 0).numpy()
        return transform(mzdata.to_tensor(image if isinstance(image, np.ndarray) else np.array(image), chans))

    return apply
