"""Upstream pretraining beyond timm's tags: ``url:<https URL>[#sha256=<hex>]``, the shipped catalogue of the
systematic benchmark's ResNet-50s (``ssl:<method>``, ``inat2021``), the key maps of each method's published
checkpoint, and ``medzoo weights convert|fetch|sources``.

The catalogue is data (``upstream_catalogue.json``, extended by the JSON files in ``MEDZOO_UPSTREAM_CATALOGUE``);
``MEDZOO_UPSTREAM_MIRROR`` (an http(s) prefix or a folder) serves its files by name for offline labs. A pickled
checkpoint is converted once, with PyTorch's restricted loader, into a safetensors file that every later run
uses; see ``upstream_fetch``.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import click

from medzoo.plugin import (
    KeyMapSpec,
    MedzooError,
    SourceWeights,
    WeightSourceSpec,
    did_you_mean,
    hookimpl,
    load_safetensors,
    sha256_file,
    slug,
    stock_timm_name,
)

from . import upstream_fetch as fetching

SHIPPED = Path(__file__).with_name("upstream_catalogue.json")
ENTRY_KEYS = {"method", "arch", "keymap", "url", "file", "sha256", "license", "license_url", "citation", "manual",
              "redistributable"}
TRUST_ENV = "MEDZOO_TRUST_UPSTREAM"


# -- the catalogue --------------------------------------------------------------------------------

def catalogue() -> dict[str, dict[str, Any]]:
    """Name -> entry: the shipped file, then each file of ``MEDZOO_UPSTREAM_CATALOGUE`` (os.pathsep-separated;
    a later entry of the same name replaces the earlier one)."""
    extra = tuple(p for p in os.environ.get("MEDZOO_UPSTREAM_CATALOGUE", "").split(os.pathsep) if p.strip())
    return _catalogue(extra)


@lru_cache(maxsize=8)
def _catalogue(extra: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in (str(SHIPPED), *extra):
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as exc:
            raise MedzooError(f"cannot read upstream catalogue '{path}' (MEDZOO_UPSTREAM_CATALOGUE): "
                              f"{exc.strerror}") from None
        except ValueError as exc:
            raise MedzooError(f"upstream catalogue '{path}' is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise MedzooError(f"upstream catalogue '{path}' must be a JSON object of name -> entry")
        for name, entry in doc.items():
            if name.startswith("_"):
                continue
            out[name] = _check_entry(name, entry, path)
    return out


def _check_entry(name: str, entry: Any, path: str) -> dict[str, Any]:
    where = f"upstream catalogue '{path}', entry '{name}'"
    if not re.fullmatch(r"[a-z0-9_]+(:[a-z0-9_.]+)?", name):
        raise MedzooError(f"{where}: names are lowercase words, optionally BASE:NAME (e.g. ssl:moco_v2)")
    if not isinstance(entry, dict):
        raise MedzooError(f"{where} must be an object with method, arch, keymap, url, license, citation")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise MedzooError(f"{where}: unknown key '{key}'{did_you_mean(key, sorted(ENTRY_KEYS))}")
    for key in ("method", "arch", "keymap", "url"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise MedzooError(f"{where}: '{key}' is required")
    sha = entry.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
        raise MedzooError(f"{where}: sha256 must be 64 lowercase hex digits")
    return {"license": "unknown", "file": fetching.file_name(entry["url"]), "redistributable": True, **entry}


def _entry(name: str) -> dict[str, Any]:
    entries = catalogue()
    if name not in entries:
        raise MedzooError(f"no upstream source '{name}'{did_you_mean(name, sorted(entries))} "
                          "(`medzoo weights sources` lists them)")
    return entries[name]


def mirror_location(entry: dict[str, Any]) -> str | None:
    """Where ``MEDZOO_UPSTREAM_MIRROR`` serves an entry's file: a URL, a local file URI, or None (no mirror)."""
    mirror = os.environ.get("MEDZOO_UPSTREAM_MIRROR", "").strip()
    if not mirror:
        return None
    if re.match(r"https?://", mirror):
        return mirror.rstrip("/") + "/" + entry["file"]
    path = Path(mirror).expanduser() / entry["file"]
    if not path.is_file():
        raise MedzooError(f"the mirror folder {mirror} (MEDZOO_UPSTREAM_MIRROR) has no {entry['file']}; "
                          f"put the file from {entry['url']} there under that name")
    return path.resolve().as_uri()


def trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


# -- sources --------------------------------------------------------------------------------------

def _check_arch(arch, entry_arch: str, name: str) -> None:
    from medzoo.plugin import registry

    theirs = stock_timm_name(registry().resolve("archs", entry_arch))
    if arch.name != entry_arch and stock_timm_name(arch) != theirs:
        raise MedzooError(f"'{name}' holds {entry_arch} weights, not {arch.name}; train {entry_arch} from it")


def _converted(download: Path, sha: str, arch: str, keymap: str | None, origin: str) -> tuple[dict, str]:
    """The safetensors conversion of a downloaded pickle, made once (reused by content hash and arch)."""
    from medzoo.plugin import log

    out = fetching.root() / "converted" / f"{sha}-{slug(arch)}-{keymap or 'auto'}.safetensors"
    if not out.is_file():
        result = fetching.convert_file(download, out, arch=arch, keymap=keymap)
        log(f"{origin}: converted {download.name} to safetensors once ({result})")
    return load_safetensors(out), sha256_file(out)


def _weights(path: Path, sha: str, arch: str, keymap: str | None, origin: str) -> tuple[dict, str]:
    if fetching.is_pickle(path):
        return _converted(path, sha, arch, keymap, origin)
    state = load_safetensors(path)
    want = fetching.backbone_shapes(arch)
    missing = [k for k in want if k not in state]
    if missing:  # a safetensors file in another naming: map it like a pickle's tensors
        result = fetching.convert(state, arch, keymap)
        return result.state, sha
    return state, sha


def load_url(*, arch, arg=None) -> SourceWeights:
    url, sha = fetching.split_url(arg or "")
    pinned = fetching.pins().get(url)
    known = sha or pinned
    name = fetching.file_name(url)
    cached = known and (fetching.root() / "downloads" / known / name)
    is_pickle_name = name.lower().endswith(fetching.PICKLE_SUFFIXES)
    done = known and any((fetching.root() / "converted").glob(f"{known}-{slug(arch.name)}-*.safetensors"))
    if is_pickle_name and not done and not trusted():
        raise MedzooError(f"{name} is a pickled checkpoint: medzoo converts it once with PyTorch's restricted loader "
                          "(tensors only) if you pass --trust-upstream (or set MEDZOO_TRUST_UPSTREAM=1), or convert it "
                          "yourself with `medzoo weights convert`")
    path, got = (cached, known) if cached and cached.is_file() else fetching.fetch(url, sha256=sha)
    if fetching.is_pickle(path) and not done and not trusted():
        raise MedzooError(f"{url} is a pickled checkpoint: pass --trust-upstream (or MEDZOO_TRUST_UPSTREAM=1) to "
                          "convert it once with PyTorch's restricted loader")
    state, digest = _weights(path, got, arch.name, None, f"url:{url}")
    # an arbitrary URL says nothing of its terms: unknown, so publishing asks for --license
    return SourceWeights(state, tag=f"url:{got[:12]}", sha256=digest, url=f"{url}#sha256={got}", license="unknown")


def load_entry(name: str, arch) -> SourceWeights:
    entry = _entry(name)
    _check_arch(arch, entry["arch"], name)
    mirror = mirror_location(entry)
    pinned = fetching.pins().get(entry["url"])
    known = entry.get("sha256") or pinned
    done = None
    if known:
        pattern = f"{known}-{slug(entry['arch'])}-{entry['keymap']}.safetensors"
        hits = sorted((fetching.root() / "converted").glob(pattern))
        done = hits[0] if hits else None
    if done is None:
        if entry.get("manual") and not mirror:
            raise MedzooError(f"'{name}' ({entry['method']}) is {entry['manual']}; then put the file in a mirror "
                              f"folder as {entry['file']} (MEDZOO_UPSTREAM_MIRROR=/folder, docs/training.md). "
                              f"Published at {entry['url']}")
        if not entry.get("sha256") and not trusted():
            raise MedzooError(f"'{name}' ({entry['method']}) has no published checksum: pass --trust-upstream (or "
                              f"set MEDZOO_TRUST_UPSTREAM=1) to download {entry['file']} once, pin its sha256 and "
                              "convert it with PyTorch's restricted loader; later runs reuse the converted file")
        path, known = fetching.fetch(mirror or entry["url"], sha256=entry.get("sha256"), name=entry["file"],
                                     mirror_of=entry["url"])
        state, digest = _weights(path, known, entry["arch"], entry["keymap"], name)
    else:
        state, digest = load_safetensors(done), sha256_file(done)
    return SourceWeights(state, tag=f"{name}@{known[:12]}", sha256=digest, url=f"{entry['url']}#sha256={known}",
                         license=entry["license"], license_url=entry.get("license_url"), citation=entry.get("citation"),
                         method=entry["method"], redistributable=bool(entry["redistributable"]))


def details(name: str) -> dict[str, str]:
    entry = _entry(name)
    pinned = fetching.pins().get(entry["url"])
    sha = entry.get("sha256")
    return {"method": entry["method"], "arch": entry["arch"], "url": entry["url"],
            "download": f"by hand: {entry['manual']}" if entry.get("manual") else "direct",
            "mirror file name": entry["file"], "license": entry["license"],
            "license url": entry.get("license_url") or "-", "citation": entry.get("citation") or "-",
            "sha256": sha or (f"not published; pinned here to {pinned}" if pinned else "not published"),
            "key map": entry["keymap"], "redistributable": "yes" if entry["redistributable"] else "no"}


# -- key maps of the methods' published checkpoints ---------------------------------------------------

KEY_MAPS = (
    KeyMapSpec("supervised", unwrap=("state_dict", "model"), strip=("module.", ""), drop=("fc.",),
               description="a torchvision/timm state dict, maybe under 'state_dict' or 'model' and DataParallel's "
                           "'module.' (iNat2021, Barlow Twins, converted SimCLR/BYOL)"),
    KeyMapSpec("moco", unwrap=("state_dict",), strip=("module.encoder_q.", "encoder_q."), drop=("fc.",),
               description="MoCo v1/v2 and PCL: the query encoder under 'state_dict' (the key encoder, queue and "
                           "MLP projection are left out)"),
    KeyMapSpec("swav", unwrap=("state_dict",), strip=("module.", ""), drop=("projection_head.", "prototypes.", "fc."),
               description="SwAV, DeepCluster v2, SeLa v2: 'module.' prefix, projection head and prototypes left out"),
    KeyMapSpec("pycontrast", unwrap=("model",), strip=("module.encoder.", "encoder."), drop=("fc.",),
               description="PyContrast (InsDis, PIRL, InfoMin): the encoder under 'model' (heads, jigsaw branch and "
                           "EMA copy left out)"),
    KeyMapSpec("byol_pytorch", unwrap=("online_network_state_dict", "state_dict"), strip=("online_network.encoder.",),
               drop=("fc.",), description="BYOL re-implementations that save the online network's encoder "
                                          "('online_network.encoder.'); the projector/predictor are left out"),
    KeyMapSpec("dino", unwrap=("teacher",), strip=("module.backbone.", "backbone."), drop=("fc.",),
               description="DINO full checkpoints: the teacher's backbone (its head left out)"),
)


@hookimpl
def register_key_maps(register):
    for spec in KEY_MAPS:
        register(spec)


@hookimpl
def register_weight_sources(register):
    register(WeightSourceSpec(
        "url", load_url, "weights downloaded once from an https URL into $MEDZOO_HOME (resumable), verified "
        "against #sha256= when given and pinned to the first download otherwise; a .pth is converted to safetensors "
        "once with --trust-upstream", takes_arg=True, arg_help="https URL[#sha256=<hex>]",
        named_by_hash=True))
    by_base: dict[str, dict[str, str]] = {}
    for name, entry in catalogue().items():
        base, _, arg = name.partition(":")
        by_base.setdefault(base, {})[arg] = f"{entry['method']} ({entry['arch']}, licence {entry['license']})"
    for base, args in sorted(by_base.items()):
        if "" in args and len(args) == 1:
            register(WeightSourceSpec(base, lambda *, arch, arg=None, _n=base: load_entry(_n, arch),
                                      f"upstream {args['']} from the catalogue (`medzoo info {base}`)",
                                      details=lambda arg=None, _n=base: details(_n)))
            continue
        register(WeightSourceSpec(
            base, lambda *, arch, arg=None, _b=base: load_entry(f"{_b}:{arg}", arch),
            f"upstream checkpoints from the catalogue: {', '.join(sorted(a for a in args if a))}",
            takes_arg=True, arg_help="method", choices={a: d for a, d in sorted(args.items()) if a},
            details=lambda arg=None, _b=base: details(f"{_b}:{arg}") if arg else {}))


# -- commands -------------------------------------------------------------------------------------

@hookimpl
def register_commands(cli):
    @cli.group("weights")
    def weights():
        """Upstream weights: convert a pickled checkpoint, fetch catalogue sources, list them."""

    @weights.command("convert")
    @click.argument("src")
    @click.option("--to", "out", required=True, type=click.Path(dir_okay=False), help="NAME.safetensors to write.")
    @click.option("--arch", default="resnet50", show_default=True, help="The architecture the weights are for.")
    @click.option("--keymap", help="How its keys map to timm's (`medzoo list keymaps`; default: the first that "
                                   "matches every backbone tensor).")
    def convert(src, out, arch, keymap):
        """Convert a pickled .pth/.pth.tar (a path or an https URL) to safetensors with PyTorch's restricted
        loader (tensors and plain containers only), keeping the backbone tensors under timm's names."""
        from medzoo.plugin import registry

        arch_ref = registry().resolve("archs", arch)
        if not out.endswith(".safetensors"):
            raise MedzooError(f"--to must name a .safetensors file (got '{out}')")
        target = Path(out)
        if target.exists():
            raise MedzooError(f"{out} exists; medzoo does not overwrite files: pick another name or remove it")
        if re.match(r"https?://", src):
            url, sha = fetching.split_url(src)
            path, _ = fetching.fetch(url, sha256=sha)
        else:
            path = Path(src)
            if not path.is_file():
                raise MedzooError(f"'{src}' does not exist; give a .pth path or an https URL")
        result = fetching.convert_file(path, target, arch=arch_ref.name, keymap=keymap)
        click.echo(f"{result}")
        click.echo(f"wrote {out} (sha256 {sha256_file(out)}); train from it with --stages file:{out},DATASET")

    @weights.command("fetch")
    @click.argument("names", nargs=-1, required=True)
    @click.option("--trust-upstream", is_flag=True, help="Download and convert sources that publish no checksum.")
    def fetch(names, trust_upstream):
        """Download and convert catalogue sources ahead of training (e.g. before going offline)."""
        from medzoo.plugin import registry

        if trust_upstream:
            os.environ[TRUST_ENV] = "1"
        for name in names:
            entry = _entry(name)
            w = load_entry(name, registry().resolve("archs", entry["arch"]))
            click.echo(f"{name}: ready ({len(w.state_dict)} tensors, {w.url})")

    @weights.command("sources")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def sources(as_json):
        """The upstream catalogue: method, licence, checksum, URL."""
        rows = [{"name": n, **details(n)} for n in sorted(catalogue())]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            click.echo(f"{r['name']:<20} {r['method']:<22} {r['license']:<14} "
                       f"{'sha256 ' + r['sha256'][:12] if len(r['sha256']) == 64 else r['sha256']}")
            click.echo(f"{'':<20} {r['url']}")
