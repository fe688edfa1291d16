"""Publishing a stage checkpoint to the Hugging Face Hub in the layout its own library loads.

The layout is the architecture's trait (``ArchSpec.hub_layout``, a ``medzoo.hublayout.HubLayout``):
``model.safetensors`` (medzoo's file, byte for byte), ``README.md`` (the model card) and medzoo's config
(lineage under ``"medzoo"``) as ``config.json``, or, when the layout's library writes its own ``config.json``
from the built model, as ``medzoo.json`` beside it (one ``config.json`` cannot serve two libraries).
huggingface_hub's usual configuration applies (``HF_TOKEN`` or ``hf auth login``, ``HF_ENDPOINT``);
medzoo never reads the token itself, so it cannot write it anywhere.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cards, licenses, store, weights
from .hublayout import MEDZOO_JSON, layout_of
from .registry import MedzooError, registry

FILES = (store.WEIGHTS, store.CONFIG, "README.md", MEDZOO_JSON)
DRY_RUN_MARKER = ".medzoo-dry-run"  # marks a folder a dry run wrote, the only non-empty kind it replaces


@dataclass
class PublishResult:
    repo_id: str
    url: str
    commit: str | None  # None for a dry run
    commit_url: str | None
    folder: Path | None  # the dry run's folder
    files: list[str] = field(default_factory=list)
    catalogue_entry: dict[str, Any] = field(default_factory=dict)
    layout: str = "medzoo"
    plain_code: str = ""  # how the layout's own library loads it, without medzoo ('' if only medzoo does)


def layout(ckpt: store.Checkpoint) -> str:
    """The name of the Hub layout a checkpoint is published in (its architecture's ``ArchSpec.hub_layout``)."""
    return layout_of(registry().resolve("archs", ckpt.lineage.arch).spec).name


def _plain_code(ckpt: store.Checkpoint, repo_id: str) -> str:
    lin = ckpt.lineage
    layout = layout_of(registry().resolve("archs", lin.arch).spec)
    return layout.plain_code(repo_id, num_classes=ckpt.num_classes, in_chans=lin.in_chans, image_size=lin.image_size)


def check_repo_id(repo_id: str) -> str:
    """huggingface_hub's own validation, plus the namespace a model repo needs; before anything is written
    (the id goes into the card's code blocks)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise MedzooError(f"--repo-id {repo_id!r} is not a valid Hub repo id ({_short(exc)}); "
                          "write it as ORG/NAME with letters, digits, '-', '_' and '.'") from None
    if repo_id.count("/") != 1:
        raise MedzooError(f"--repo-id {repo_id!r} is not ORG/NAME; write e.g. --repo-id my-lab/model-name")
    return repo_id


def check_publishable(ckpt: store.Checkpoint, *, allow_no_metrics: bool = False, license: str | None = None,
                      allow_non_redistributable: bool = False) -> dict[str, Any]:
    """Refuse what should not be shared; returns the evaluation metrics the card reports."""
    lin = ckpt.lineage
    if not lin.weights_sha256:
        # stricter than loading (which warns): a published model must carry the hash others verify it by
        raise MedzooError(f"'{ckpt.name}' records no weights_sha256, so nobody could verify its weights; re-train it")
    weights.verify(ckpt.path / store.WEIGHTS, [lin.weights_sha256], f"checkpoint '{ckpt.name}'")
    if license is not None and not licenses.is_id(license):
        raise MedzooError(f"--license {license!r} is not a Hugging Face licence id; use one of "
                          f"{', '.join(sorted(licenses.HF_LICENSES - {'unknown'}))}")
    if license is None and lin.license() == licenses.UNKNOWN:
        unknown = [s.dataset for s in lin.stages if s.license == licenses.UNKNOWN]
        what = f"the licence of {', '.join(store.public_dataset(d) for d in unknown)}" if unknown else \
            "the licence of its source weights"
        raise MedzooError(f"'{ckpt.name}': {what} is unknown, so these weights' licence is too; check the data's "
                          "terms and name the licence with --license ID (e.g. --license cc-by-nc-4.0)")
    if license == licenses.UNKNOWN:
        raise MedzooError("--license unknown publishes nothing better than no licence; name the licence that applies")
    if not lin.source.redistributable and not allow_non_redistributable:
        raise MedzooError(f"'{ckpt.name}' derives from {lin.source.name}, whose terms forbid redistributing derived "
                          "weights; publish only if those terms allow it for you, with --allow-non-redistributable")
    metrics = cards.evaluation_metrics(ckpt)
    if not cards.finite_metrics(metrics) and not allow_no_metrics:
        raise MedzooError(f"'{ckpt.name}' has no evaluation metrics (metrics.json or validation metrics in its "
                          "lineage); evaluate it first, or pass --allow-no-metrics to publish it anyway")
    return metrics


def write_folder(ckpt: store.Checkpoint, dest: Path, *, repo_id: str | None, metrics: dict[str, Any],
                 license: str | None = None) -> list[str]:
    """Write the exact files a publish uploads into the (empty) directory ``dest``."""
    full = ckpt.full_config()
    if license:  # the publisher's licence is the one config.json names too (timm reads pretrained_cfg.license)
        full["pretrained_cfg"] = {**(full.get("pretrained_cfg") or {}), "license": license}
    config = json.dumps(full, indent=2, default=str)
    hub_layout = layout_of(registry().resolve("archs", ckpt.lineage.arch).spec)
    if hub_layout.write is not None:
        from . import zoo

        # the library writes its own config.json (e.g. model class and constructor arguments) from the built model
        hub_layout.write(zoo.load(ckpt.path), dest)
        (dest / MEDZOO_JSON).write_text(config)
    else:
        (dest / store.CONFIG).write_text(config)
    # our file, not a re-serialisation (also over smp's copy of the same tensors): its bytes are the ones
    # the lineage's sha256 names; re-check the copy, since this is the file the world will verify
    shutil.copyfile(ckpt.path / store.WEIGHTS, dest / store.WEIGHTS)
    if weights.sha256_file(dest / store.WEIGHTS) != ckpt.lineage.weights_sha256:
        raise MedzooError(f"copying the weights of '{ckpt.name}' changed them (disk error?); retry")
    (dest / "README.md").write_text(cards.render(ckpt, repo_id=repo_id, metrics=metrics, license=license))
    return sorted(p.name for p in dest.iterdir())


def catalogue_entry(ckpt: store.Checkpoint, repo_id: str, commit: str | None, metrics: dict[str, Any],
                    license: str | None = None) -> dict[str, Any]:
    """What to add to a catalogue file so that ``medzoo.load(NAME)`` finds the published weights."""
    lin = ckpt.lineage
    last = lin.last
    value = last.best_value if last else None
    return {"repo_id": repo_id, "revision": commit or "main", "weights_sha256": lin.weights_sha256,
            "arch": lin.arch, "chain": " > ".join(lin.public_chain()), "task": lin.task,
            "metric": f"{last.best.get('metric')} {value:.4f}" if last and value is not None else None,
            "license": cards.card_license(ckpt, license)}


def _dry_run_target(final: Path, ckpt: store.Checkpoint) -> None:
    """A dry run writes only into a new or empty folder, or one an earlier dry run made (its marker file)."""
    here = Path.cwd().resolve()
    target = final.resolve()
    if target == here or target in here.parents:
        raise MedzooError(f"--out '{final}' is the current folder or one above it; a dry run needs a folder of its "
                          "own: pass a new --out directory")
    if target == store.home().resolve() or store.home().resolve() in target.parents and \
            target.parent != (store.home() / "publish").resolve():
        raise MedzooError(f"--out '{final}' is inside medzoo's store; pass a new --out directory")
    if not final.exists() and not final.is_symlink():
        return
    if final.is_symlink() or not final.is_dir():
        raise MedzooError(f"--out '{final}' exists and is not a folder; pass a new --out directory")
    if any(final.iterdir()) and not (final / DRY_RUN_MARKER).is_file():
        raise MedzooError(f"--out '{final}' holds files medzoo did not write (no {DRY_RUN_MARKER}); nothing was "
                          "changed: pass a new or empty --out directory")


def dry_run(name: str, out: str | Path | None = None, *, repo_id: str | None = None,
            allow_no_metrics: bool = False, license: str | None = None,
            allow_non_redistributable: bool = False) -> PublishResult:
    """Write the folder a publish would upload (default ``$MEDZOO_HOME/publish/<name>``), replacing an
    earlier dry run there (marked by ``.medzoo-dry-run``); refuses any other non-empty folder. Nothing is sent."""
    if repo_id is not None:
        check_repo_id(repo_id)
    ckpt = store.get_local(name)
    metrics = check_publishable(ckpt, allow_no_metrics=allow_no_metrics, license=license,
                                allow_non_redistributable=allow_non_redistributable)
    final = Path(out).expanduser() if out else store.home() / "publish" / name
    _dry_run_target(final, ckpt)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.new_tmp_dir(final.parent, final.name)
    try:
        files = write_folder(ckpt, tmp, repo_id=repo_id, metrics=metrics, license=license)
        (tmp / DRY_RUN_MARKER).write_text(json.dumps({"checkpoint": name, "repo_id": repo_id}) + "\n")
        store.swap_dir(tmp, final)  # an earlier dry run there (checked above) is replaced, never half-replaced
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PublishResult(repo_id or "", "", None, None, final, files,
                         catalogue_entry(ckpt, repo_id or f"<org>/{name}", None, metrics, license), layout(ckpt),
                         _plain_code(ckpt, repo_id or f"<org>/{name}"))


def publish(name: str, repo_id: str, *, private: bool = False, revision: str | None = None,
            commit_message: str | None = None, allow_no_metrics: bool = False, license: str | None = None,
            allow_non_redistributable: bool = False) -> PublishResult:
    """Create the repo if needed and upload the checkpoint as one commit; returns its URL and commit id."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    ckpt = store.get_local(name)
    metrics = check_publishable(ckpt, allow_no_metrics=allow_no_metrics, license=license,
                                allow_non_redistributable=allow_non_redistributable)
    api = HfApi()  # token and endpoint from huggingface_hub's own configuration
    # private=None (not False) when not asked: the Hub's default for the namespace then applies
    with tempfile.TemporaryDirectory(prefix="medzoo-publish-") as tmp:  # removed on failure too
        files = write_folder(ckpt, Path(tmp), repo_id=repo_id, metrics=metrics, license=license)
        repo_url = _hub(lambda: api.create_repo(repo_id, private=private or None, exist_ok=True), "creating", repo_id)
        if revision and revision != "main":
            _hub(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), "creating a branch on", repo_id)
        info = _hub(lambda: api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision,
            commit_message=commit_message or f"medzoo: {name}",
            commit_description=f"weights sha256 {ckpt.lineage.weights_sha256}"), "uploading to", repo_id)
    return PublishResult(repo_id, str(getattr(repo_url, "url", repo_url)), info.oid, info.commit_url, None, files,
                         catalogue_entry(ckpt, repo_id, info.oid, metrics, license), layout(ckpt),
                         _plain_code(ckpt, repo_id))


def _hub(fn, doing: str, repo_id: str):
    from huggingface_hub.errors import HfHubHTTPError

    # connection lost, bad endpoint, local token problems
    transport: tuple[type[BaseException], ...] = (OSError, ValueError, *_transport_errors())
    try:
        return fn()
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = ("check that HF_TOKEN (or `hf auth login`) grants write access to it" if status in (401, 403)
                else "retry later")
        raise MedzooError(f"{doing} '{repo_id}' failed (HTTP {status}: {_short(exc)}); the local checkpoint is "
                          f"unchanged; {hint}") from None
    except transport as exc:
        raise MedzooError(f"{doing} '{repo_id}' failed ({type(exc).__name__}: {_short(exc)}); the local "
                          "checkpoint is unchanged; check HF_ENDPOINT and your connection") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    # connection errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x): not OSErrors
    import importlib

    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx", "requests"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        errors.append(getattr(mod, "RequestException", None) or mod.HTTPError)
    return tuple(errors)


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
