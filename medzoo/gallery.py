"""``medzoo errors NAME --dataset D``: one self-contained HTML page of the test images a model got wrong
(and the least confident right ones), to look at every mistake by hand.

Each card shows the original image as the dataset stores it, beside the exact tensor the model saw
(after the cached preprocessing and the evaluation transform, de-normalised for display), with the true
label, the prediction and its probability, and (with the ``saliency`` extra) the model input's Grad-CAM map
for the predicted class (``medzoo.saliency``). Mistakes come first, most confident first (the most worrying);
then right answers, least confident first. Images are embedded as base64 PNG, so the file can be mailed
or archived alone.
"""

from __future__ import annotations

import base64
import html
import io
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import store
from .registry import MedzooError, MedzooWarning

THUMB = 224  # longest side of an embedded image, px


def _png(img: np.ndarray) -> str:
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    im = Image.fromarray(arr)
    im.thumbnail((THUMB, THUMB))
    if max(im.size) < THUMB // 2:  # tiny inputs (32 px) are enlarged without smoothing, to stay readable
        k = THUMB // 2 // max(im.size)
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _seen(x: torch.Tensor, mean, std) -> np.ndarray:
    """The model's input tensor (C×H×W, normalised) back to displayable pixels."""
    c = x.shape[0]
    m = torch.tensor(list(mean)[:c] if len(mean) >= c else [mean[0]] * c).view(c, 1, 1)
    s = torch.tensor(list(std)[:c] if len(std) >= c else [std[0]] * c).view(c, 1, 1)
    if c == 1 and len(mean) == 3:  # grey input from RGB statistics: what build_transform does
        m, s = torch.tensor(float(np.mean(mean))), torch.tensor(float(np.mean(std)))
    img = (x * s + m).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255).round().astype(np.uint8)


def gallery(name: str, *, dataset: str | None = None, split: str = "test", data_root=None, device: str | None = None,
            right: int = 16, out: str | Path | None = None, batch_size: int = 64,
            saliency: bool | None = None, overwrite: bool = False) -> tuple[Path, int, int]:
    """Write the gallery; returns (path, number of mistakes, number of right answers shown).

    ``saliency``: show each model input's Grad-CAM map for the predicted class; None = when the ``saliency``
    extra is installed (else one warning), True = required, False = never. ``out``: an existing file there
    is replaced only when it is a gallery medzoo wrote (its generator marker), or with ``overwrite``.

    Right and wrong are the checkpoint's decision: at its stored operating point for a two-class model that
    has one (as ``medzoo predict``'s ``decision`` column), else the most probable class; the page says which."""
    from . import saliency as sal
    from .cache import CachedSource
    from .devices import pick_device
    from .evaluation import eval_dataset, eval_folder, open_for, predict
    from .zoo import load, transform_config

    if right < 0:
        raise MedzooError("--right must be ≥ 0")
    if out is not None:
        _may_write(Path(out), overwrite)
    asked = saliency
    if saliency is None:
        saliency = sal.available()
        if not saliency:
            warnings.warn(sal.missing_warning(), stacklevel=2)
    elif saliency:
        sal.require()  # fails here, before the predictions, when the extra is missing
    dev = pick_device(device)
    model = load(name, device=dev)
    task = model.medzoo_lineage.task
    if task != "classification":
        raise MedzooError(f"the errors gallery is for single-label classification; {model.medzoo_origin} is a {task} "
                          "model (use `medzoo evaluate` for its metrics)")
    source, dataset = open_for(model, dataset, split, data_root)
    preds = predict(model, source, split, device=dev, batch_size=batch_size)
    op = getattr(model, "medzoo_operating_point", None)
    if op is not None and op.kind == "binary" and op.classes == list(preds.classes):
        predicted = torch.tensor([preds.classes.index(d) for d in op.decide(preds.probs)])
        pos = preds.classes[1]
        rule = (f"Prediction = the decision at the checkpoint's stored operating point ({op.rule_text}, chosen on "
                f"{op.dataset}/{op.split}): {pos} when p({pos}) ≥ {op.thresholds[pos]:.4f}, as `medzoo predict` "
                f"decides; p = the predicted class's probability.")
    else:
        predicted = preds.predicted
        rule = "Prediction = most probable class (at argmax; no stored operating point applies); p = its probability."
    conf = preds.probs.gather(1, predicted.view(-1, 1).to(preds.probs.device)).view(-1)
    wrong = [i for i in range(len(predicted)) if predicted[i] != preds.target[i]]
    ok = [i for i in range(len(predicted)) if predicted[i] == preds.target[i]]
    wrong.sort(key=lambda i: -float(conf[i]))
    ok = sorted(ok, key=lambda i: float(conf[i]))[:right]
    ds = eval_dataset(model, source, split)
    cfg = transform_config(model)
    raw = source.source if isinstance(source, CachedSource) else source  # the original, before preprocessing
    cams = {}
    if saliency:
        try:
            cams = _saliency(model, ds, wrong + ok, predicted, batch_size)
        except MedzooError as exc:  # an architecture without a saliency layer: the gallery is still worth having
            if asked:
                raise
            warnings.warn(MedzooWarning(f"saliency maps left out: {exc}"), stacklevel=2)
            saliency = False

    def card(i: int, kind: str) -> str:
        r = preds.records[i]
        t, p = int(preds.target[i]), int(predicted[i])
        seen = _seen(ds[i][0], cfg.mean, cfg.std)
        original = raw.read(r)
        e = html.escape
        cam = (f'<figure class="saliency"><img src="data:image/png;base64,{_png(sal.overlay(seen, cams[i]))}">'
               f'<figcaption>Grad-CAM: {e(preds.classes[p])}</figcaption></figure>' if i in cams else "")
        return (f'<div class="card {kind}" data-id="{e(r.id)}"><div class="imgs">'
                f'<figure><img src="data:image/png;base64,{_png(original)}"><figcaption>original</figcaption></figure>'
                f'<figure><img src="data:image/png;base64,{_png(seen)}"><figcaption>model input '
                f'{seen.shape[1]}×{seen.shape[0]}</figcaption></figure>{cam}</div>'
                f'<p class="id">{e(r.id)}{" · patient " + e(r.patient) if r.patient else ""}</p>'
                f'<p>true <b>{e(preds.classes[t])}</b> · predicted <b>{e(preds.classes[p])}</b> '
                f'p={float(conf[i]):.3f}</p><p class="small">p(true class)={float(preds.probs[i, t]):.3f}</p></div>')

    lin = model.medzoo_lineage
    title = f"{lin.name or name}: {store.public_dataset(dataset)}/{split}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(wrong)} of {len(predicted)} images misclassified "
            f"(accuracy {1 - len(wrong) / len(predicted):.3f}). "
            f"{html.escape(rule)} Model input = the evaluation transform's "
            f"tensor, de-normalised.{SALIENCY_NOTE if saliency else ''} "
            f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by medzoo errors.</p>",
            f'<h2 id="wrong">Misclassified ({len(wrong)}), most confident first</h2><div class="grid">',
            *[card(i, "wrong") for i in wrong], "</div>",
            f'<h2 id="right">Right but least confident ({len(ok)})</h2><div class="grid">',
            *[card(i, "right") for i in ok], "</div>"]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'>{MARKER}<title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    local = store.find_local(str(name))
    default = (local.path / "eval" if local else store.home() / "evaluations" / store.slug(str(name)))
    path = Path(out) if out else default / f"errors-{eval_folder(dataset, source)}-{split}.html"
    store.atomic_write(path, page)
    return path, len(wrong), len(ok)


# in every page medzoo writes, so `-o FILE` replaces only its own galleries without --overwrite
MARKER = '<meta name="generator" content="medzoo errors">'


def _may_write(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise MedzooError(f"-o {path} is a folder; give the HTML file to write")
    if not path.exists() or overwrite:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError as exc:
        raise MedzooError(f"-o {path}: cannot read the file already there ({exc.strerror})") from None
    if MARKER not in head:
        raise MedzooError(f"-o {path}: a file medzoo did not write is there; choose another file, or pass --overwrite "
                          "to replace it")


SALIENCY_NOTE = (" Grad-CAM = where the model's last feature stage supported the predicted class (red = most), "
                 "over the model input.")


def _saliency(model, ds, indices: list[int], predicted, batch_size: int) -> dict[int, np.ndarray]:
    """Grad-CAM of each shown image for its predicted class, by index."""
    from .saliency import maps

    found: dict[int, np.ndarray] = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch = torch.stack([ds[i][0] for i in chunk])
        for i, m in zip(chunk, maps(model, batch, targets=[int(predicted[i]) for i in chunk])):
            found[i] = m
    return found


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{border:2px solid #ccc;border-radius:6px;padding:8px;width:min(710px,100%)}
.card.wrong{border-color:#c0392b}.card.right{border-color:#27ae60}
.imgs{display:flex;gap:6px}figure{margin:0;text-align:center}figcaption{font-size:11px;color:#666}
img{max-width:224px;image-rendering:pixelated;background:#000}
p{margin:4px 0;font-size:13px}.id{font-family:monospace}.small{font-size:11px;color:#666}"""
