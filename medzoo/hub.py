"""Publishing a stage checkpoint to the Hugging Face Hub in the layout its own library loads.

- classifiers (timm): ``model.safetensors``, ``config.json`` (timm's Hub format, lineage under
  ``"medzoo"``) and ``README.md`` (the model card), so plain ``timm.create_model("hf-hub:…")`` loads it;
- segmentation-models-pytorch models: smp's ``save_pretrained`` layout (its ``config.json`` with
  ``_model_class``, which ``smp.from_pretrained`` reads), the lineage in ``medzoo.json``, the same
  ``model.safetensors`` and card; one ``config.json`` cannot serve timm and smp at once;
- other segmentation models (MONAI's Swin UNETR): medzoo's own checkpoint files, as stored.
huggingface_hub's usual configuration applies (``HF_TOKEN`` or ``hf auth login``, ``HF_ENDPOINT``);
medzoo never reads the token itself, so it cannot write it anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cards, models, store
from .registry import MedzooError
from .zoo import MEDZOO_JSON

FILES = (store.WEIGHTS, store.CONFIG, "README.md", MEDZOO_JSON)


@dataclass
class PublishResult:
    repo_id: str
    url: str
    commit: str | None  # None for a dry run
    commit_url: str | None
    folder: Path | None  # the dry run's folder
    files: list[str] = field(default_factory=list)
    catalogue_entry: dict[str, Any] = field(default_factory=dict)
    layout: str = "timm"


def layout(ckpt: store.Checkpoint) -> str:
    """Which library's Hub layout a checkpoint is published in: 'timm', 'smp' or 'medzoo'."""
    return {"timm": "timm", "segmentation_models_pytorch": "smp"}.get(cards.library_of(ckpt), "medzoo")


def check_publishable(ckpt: store.Checkpoint, *, allow_no_metrics: bool = False) -> dict[str, Any]:
    """Refuse what should not be shared; returns the evaluation metrics the card reports."""
    if not (ckpt.config.get("medzoo") or {}).get("weights_sha256"):
        raise MedzooError(f"'{ckpt.name}' records no weights_sha256, so nobody could verify its weights; re-train it")
    sha = models.sha256_file(ckpt.path / store.WEIGHTS)
    if sha != ckpt.lineage["weights_sha256"]:
        raise MedzooError(f"weights of '{ckpt.name}' do not match the sha256 in its config.json (corrupted or "
                          "replaced); re-train it before publishing")
    metrics = cards.evaluation_metrics(ckpt)
    if not cards.finite_metrics(metrics) and not allow_no_metrics:
        raise MedzooError(f"'{ckpt.name}' has no evaluation metrics (metrics.json or validation metrics in its "
                          "lineage); evaluate it first, or pass --allow-no-metrics to publish it anyway")
    return metrics


def write_folder(ckpt: store.Checkpoint, dest: Path, *, repo_id: str | None, metrics: dict[str, Any]) -> list[str]:
    """Write the exact files a publish uploads into the (empty) directory ``dest``."""
    config = json.dumps(ckpt.config, indent=2, default=str)
    if layout(ckpt) == "smp":
        from . import zoo

        # smp writes its own config.json (model class and constructor arguments) from the built model
        zoo.load(ckpt.path).save_pretrained(dest)
        (dest / MEDZOO_JSON).write_text(config)
    else:
        (dest / store.CONFIG).write_text(config)
    # our file, not a re-serialisation (also over smp's copy of the same tensors): its bytes are the ones
    # the lineage's sha256 names; re-check the copy, since this is the file the world will verify
    shutil.copyfile(ckpt.path / store.WEIGHTS, dest / store.WEIGHTS)
    if models.sha256_file(dest / store.WEIGHTS) != ckpt.lineage["weights_sha256"]:
        raise MedzooError(f"copying the weights of '{ckpt.name}' changed them (disk error?); retry")
    (dest / "README.md").write_text(cards.render(ckpt, repo_id=repo_id, metrics=metrics))
    return sorted(p.name for p in dest.iterdir())


def catalogue_entry(ckpt: store.Checkpoint, repo_id: str, commit: str | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """What to add to a catalogue file so that ``medzoo.load(NAME)`` finds the published weights."""
    lin = ckpt.lineage
    stages = lin.get("stages") or []
    best = (stages[-1].get("best") if stages else None) or {}
    chain = [(lin.get("source") or {}).get("name", "?")] + [s["dataset"] for s in stages]
    return {"repo_id": repo_id, "revision": commit or "main", "weights_sha256": lin.get("weights_sha256"),
            "arch": lin.get("arch"), "chain": " > ".join(chain), "task": lin.get("task"),
            "metric": f"{best.get('metric')} {best['value']:.4f}" if isinstance(best.get("value"), float) else None,
            "license": store.most_restrictive([s.get("license") or "" for s in stages])}


def dry_run(name: str, out: str | Path | None = None, *, repo_id: str | None = None,
            allow_no_metrics: bool = False) -> PublishResult:
    """Write the folder a publish would upload (default ``$MEDZOO_HOME/publish/<name>``), replacing an
    earlier dry run there; nothing is sent anywhere."""
    ckpt = store.get_local(name)
    metrics = check_publishable(ckpt, allow_no_metrics=allow_no_metrics)
    final = Path(out).expanduser() if out else store.home() / "publish" / name
    if final.exists() and (not final.is_dir() or set(os.listdir(final)) - set(FILES)):
        raise MedzooError(f"'{final}' exists and is not an earlier dry run (it holds other files); "
                          "pass another --out directory")
    tmp = store.new_tmp_dir(final.parent, final.name)
    try:
        files = write_folder(ckpt, tmp, repo_id=repo_id, metrics=metrics)
        if final.exists():
            shutil.rmtree(final)
        store.publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PublishResult(repo_id or "", "", None, None, final, files,
                         catalogue_entry(ckpt, repo_id or f"<org>/{name}", None, metrics), layout(ckpt))


def publish(name: str, repo_id: str, *, private: bool = False, revision: str | None = None,
            commit_message: str | None = None, allow_no_metrics: bool = False) -> PublishResult:
    """Create the repo if needed and upload the checkpoint as one commit; returns its URL and commit id."""
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise MedzooError(f"--repo-id '{repo_id}' is not ORG/NAME; write e.g. --repo-id my-lab/{name}")
    ckpt = store.get_local(name)
    metrics = check_publishable(ckpt, allow_no_metrics=allow_no_metrics)
    api = HfApi()  # token and endpoint from huggingface_hub's own configuration
    # private=None (not False) when not asked: the Hub's default for the namespace then applies
    with tempfile.TemporaryDirectory(prefix="medzoo-publish-") as tmp:
        files = write_folder(ckpt, Path(tmp), repo_id=repo_id, metrics=metrics)
        repo_url = _hub(lambda: api.create_repo(repo_id, private=private or None, exist_ok=True), "creating", repo_id)
        if revision and revision != "main":
            _hub(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), "creating a branch on", repo_id)
        info = _hub(lambda: api.upload_folder(
            repo_id=repo_id, folder_path=tmp, revision=revision,
            commit_message=commit_message or f"medzoo: {name}",
            commit_description=f"weights sha256 {ckpt.lineage['weights_sha256']}"), "uploading to", repo_id)
    return PublishResult(repo_id, str(getattr(repo_url, "url", repo_url)), info.oid, info.commit_url, None, files,
                         catalogue_entry(ckpt, repo_id, info.oid, metrics), layout(ckpt))


def _hub(fn, doing: str, repo_id: str):
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn()
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = ("check that HF_TOKEN (or `hf auth login`) grants write access to it" if status in (401, 403)
                else "retry later")
        raise MedzooError(f"{doing} '{repo_id}' failed (HTTP {status}: {_short(exc)}); the local checkpoint is "
                          f"unchanged; {hint}") from None
    except (OSError, ValueError) as exc:  # connection errors, bad endpoint, local token problems
        raise MedzooError(f"{doing} '{repo_id}' failed ({type(exc).__name__}: {_short(exc)}); the local "
                          "checkpoint is unchanged; check HF_ENDPOINT and your connection") from None


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
