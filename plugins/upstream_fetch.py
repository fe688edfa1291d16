"""Getting upstream weights: a resumable, pinned download, and the one-time conversion of a pickled checkpoint
to safetensors.

Everything lives under ``$MEDZOO_HOME/upstream/``: ``pins.json`` (URL -> sha256 of the first file downloaded
from it), ``downloads/<sha256>/<file>`` (the verified file, by content) and ``converted/<sha256>-<arch>.safetensors``
(its backbone in timm's names). A download in progress is ``downloads/partial/<hash of url>.part`` and resumes
from there. A pickle is only ever opened by ``torch.load(weights_only=True)``, PyTorch's restricted unpickler
(tensors and plain containers; anything else is refused without being run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medzoo.plugin import (
    KeyMapSpec,
    MedzooError,
    atomic_write,
    medzoo_home,
    registry,
    sha256_file,
    slug,
)

PICKLE_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt", ".pkl")


def root() -> Path:
    return medzoo_home() / "upstream"


# -- download --------------------------------------------------------------------------------------

def split_url(text: str) -> tuple[str, str | None]:
    """``https://x/y.pth#sha256=<hex>`` -> (url, sha256 or None)."""
    url, _, fragment = text.partition("#")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise MedzooError(f"'{text}' is not an http(s) URL; write url:https://host/path/file[#sha256=<64 hex>]")
    sha = None
    if fragment:
        key, eq, value = fragment.partition("=")
        value = value.strip().lower()
        if key != "sha256" or not eq or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise MedzooError(f"bad URL fragment '#{fragment}': the only one medzoo reads is #sha256=<64 hex digits>")
        sha = value
    return url, sha


def _pins_path() -> Path:
    return root() / "pins.json"


def pins() -> dict[str, str]:
    try:
        return json.loads(_pins_path().read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise MedzooError(f"{_pins_path()} is not valid JSON; fix or delete it (medzoo wrote it)") from None


def _pin(url: str, sha: str) -> None:
    current = pins()
    current[url] = sha
    _pins_path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write(_pins_path(), json.dumps(current, indent=2, sort_keys=True) + "\n")


def file_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    return slug(name) or "download"


def fetch(url: str, *, sha256: str | None = None, name: str | None = None,
          mirror_of: str | None = None) -> tuple[Path, str]:
    """The file at ``url`` in medzoo's cache, downloaded once (resuming a partial download) and verified.

    ``sha256``: the expected content (refused otherwise). Without it the first download pins the URL to what it
    got, and a later different file from that URL is refused. ``mirror_of``: the catalogue URL this one stands in
    for; the pin and the hash check are about that one. Returns (path, sha256)."""
    key = mirror_of or url
    pinned = pins().get(key)
    if sha256 and pinned and pinned != sha256:
        raise MedzooError(f"{key} is pinned to sha256 {pinned[:12]}… (the first download) but {sha256[:12]}… was "
                          f"asked for; if the publisher replaced the file, remove its line from {_pins_path()}")
    want = sha256 or pinned
    name = name or file_name(url)
    if want:
        done = root() / "downloads" / want / name
        if done.is_file():
            return done, want
    partial = partial_path(url)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _download(url, partial)
    got = sha256_file(partial)
    if want and got != want:
        bad = partial.with_suffix(".rejected")
        os.replace(partial, bad)
        what = "the sha256 you gave" if sha256 else "the file first downloaded from it (pinned)"
        raise MedzooError(f"{url} has sha256 {got[:12]}…, not {want[:12]}… ({what}); the file is wrong or was "
                          f"replaced; nothing was used (kept for inspection: {bad})")
    _refuse_web_page(partial, url)
    final = root() / "downloads" / got / name
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    if not pinned:
        _pin(key, got)
    return final, got


def partial_path(url: str) -> Path:
    """Where a download from ``url`` accumulates until it is complete and verified (kept across runs: resumed)."""
    return root() / "downloads" / "partial" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".part")


def _download(url: str, partial: Path) -> None:
    if urllib.parse.urlparse(url).scheme == "file":
        shutil.copyfile(urllib.parse.unquote(urllib.parse.urlparse(url).path), partial)
        return
    from huggingface_hub.file_download import http_get

    have = partial.stat().st_size if partial.exists() else 0
    try:
        with open(partial, "ab") as f:
            # huggingface_hub's downloader: Range resume (and a restart when a server ignores Range), retries
            # on dropped connections, a tqdm progress bar, and a size check against Content-Length.
            http_get(url, f, resume_size=have, displayed_filename=file_name(url))
    except Exception as exc:  # connection refused, 404, ...: one line; the partial file stays for the next try
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise MedzooError(f"could not download {url} ({type(exc).__name__}: {first}); rerun to resume "
                          f"({partial.stat().st_size if partial.exists() else 0} bytes kept), or use a mirror "
                          "(MEDZOO_UPSTREAM_MIRROR, docs/training.md)") from None


def _refuse_web_page(path: Path, url: str) -> None:
    with open(path, "rb") as f:
        head = f.read(64).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")):
        path.unlink()
        raise MedzooError(f"{url} returned a web page, not a weights file (a share link that needs a browser?); "
                          "download it by hand and use a mirror folder (MEDZOO_UPSTREAM_MIRROR, docs/training.md)")


# -- conversion ------------------------------------------------------------------------------------

@dataclass
class Conversion:
    state: dict[str, Any]
    keymap: str
    matched: int
    total: int
    dropped: list[str] = field(default_factory=list)  # checkpoint keys that are not backbone (heads, momentum copies)

    def __str__(self) -> str:
        extra = f"; left out {len(self.dropped)} non-backbone tensors (e.g. {self.dropped[0]})" if self.dropped else ""
        return f"key map '{self.keymap}': matched {self.matched}/{self.total} backbone tensors{extra}"


def read_pickle(path: Path) -> dict[str, Any]:
    """A pickled checkpoint through PyTorch's restricted unpickler: tensors and plain containers only."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("\n\n")[0].splitlines()[-1][:200] if str(exc) else ""
        raise MedzooError(f"'{path.name}' holds more than tensors and plain containers ({detail}); medzoo's "
                          "restricted loader refused it without running it. Convert it yourself only if you trust "
                          "its source, then use file:<path.safetensors>") from None
    except Exception as exc:
        raise MedzooError(f"'{path.name}' is not a PyTorch checkpoint medzoo can read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise MedzooError(f"'{path.name}' holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def apply_keymap(obj: dict[str, Any], spec: KeyMapSpec) -> tuple[dict[str, Any], list[str]]:
    """(tensors under timm-style names, keys left out)."""
    import torch

    for key in spec.unwrap:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    out, dropped = {}, []
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            dropped.append(str(key))
            continue
        new = next((key[len(p):] for p in spec.strip if key.startswith(p)), None)
        if new is None or (spec.drop and new.startswith(spec.drop)):
            dropped.append(key)
            continue
        out[new] = value
    return out, dropped


def backbone_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``arch``'s tensors without its classifier, built on the meta device (no memory)."""
    import torch

    from medzoo.plugin import classifier_names, create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=1000)
    head = classifier_names(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k not in head and not any(k.startswith(h.rsplit(".", 1)[0] + ".") for h in head)}


def convert(obj: dict[str, Any], arch: str, keymap: str | None) -> Conversion:
    """Map a loaded checkpoint onto ``arch``: with ``keymap`` that one, else the first registered one that
    matches every backbone tensor by name and shape."""
    want = backbone_shapes(arch)
    maps = registry().entries["keymaps"]
    if keymap is not None:
        if keymap not in maps:
            registry().resolve("keymaps", keymap)  # raises with "did you mean"
        candidates = [maps[keymap]]
    else:
        candidates = list(maps.values())
    best = None
    for spec in candidates:
        state, dropped = apply_keymap(obj, spec)
        fits = {k: v for k, v in state.items() if k in want and tuple(v.shape) == want[k]}
        result = Conversion(fits, spec.name, len(fits), len(want),
                            dropped + sorted(k for k in state if k not in want))
        if len(fits) == len(want):
            return result
        if best is None or result.matched > best.matched:
            best = result
    assert best is not None
    own = apply_keymap(obj, maps[best.keymap])[0]
    missing = [k for k in want if k not in own]
    misshaped = [f"{k} {tuple(own[k].shape)} vs {want[k]}" for k in want if k in own and tuple(own[k].shape) != want[k]]
    example = (misshaped or [f"{k} missing" for k in missing])[0]
    tried = f"key map '{best.keymap}'" if keymap else f"the best of {len(candidates)} key maps ('{best.keymap}')"
    raise MedzooError(f"checkpoint does not fit {arch}: {tried} matched {best.matched}/{best.total} backbone tensors "
                      f"(e.g. {example}); pick another --keymap (`medzoo list keymaps`) or register one for this "
                      "method in a plugin (docs/plugins.md)")


def convert_file(src: Path, out: Path, *, arch: str, keymap: str | None) -> Conversion:
    """``src`` (a pickle, through the restricted loader) -> ``out`` (safetensors, written atomically)."""
    from safetensors.torch import save_file

    result = convert(read_pickle(src), arch, keymap)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        state = {k: v.contiguous().clone() for k, v in result.state.items()}
        save_file(state, str(tmp), metadata={"medzoo_keymap": result.keymap, "medzoo_arch": arch,
                                             "source_sha256": sha256_file(src)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def is_pickle(path: Path) -> bool:
    """Whether a downloaded file is a pickle-based checkpoint rather than safetensors. A safetensors file starts
    with an 8-byte little-endian header length followed by a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= path.stat().st_size - 8:
            return False
    return True
