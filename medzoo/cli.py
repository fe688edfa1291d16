"""The ``medzoo`` command line: a thin layer over the Python API."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from typing import Any

import click

from ._version import __version__
from .data import DATA_ROOT_HELP
from .data import parse_data_roots as _data_roots
from .registry import KINDS, MedzooError, MedzooWarning, Ref, display_name, registry


class MedzooGroup(click.Group):
    """Turns MedzooError into a one-line ``Error: …`` and exit code 1, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MedzooError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=MedzooGroup)
@click.version_option(__version__, prog_name="medzoo")
def cli():
    """medzoo: multi-stage transfer learning for medical imaging."""


def spec_dict(spec) -> dict:
    """A spec's plain fields (callables left out), for --json and `medzoo info`."""
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = getattr(value, "name", str(value))  # a trait object (hub_layout) is shown by its name
        if not callable(value):
            out[f.name] = dict(value) if hasattr(value, "items") else value
    out["name"] = display_name(spec)
    return out


COLUMNS = {
    "archs": ("name", "task", "family", "input_size", "plugin", "description"),
    "datasets": ("name", "task", "classes", "modality", "body_part", "plugin"),
    "policies": ("name", "plugin", "description"),
    "sources": ("name", "plugin", "description"),
    "keymaps": ("name", "plugin", "description"),
    "loggers": ("name", "extra", "plugin", "description"),
    "steps": ("name", "plugin", "description"),
    "readers": ("name", "plugin", "description"),
}


def print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    def cell(value) -> str:
        if isinstance(value, (list, tuple)):
            return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else str(len(value))
        return str(value)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@cli.command("list")
@click.argument("kind", type=click.Choice([*KINDS, "weights"]))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind, as_json):
    """List registered archs, datasets, (freeze) policies, (weight) sources, or weights (local checkpoints +
    the catalogue)."""
    if kind == "weights":
        rows = weights_rows()
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
        else:
            print_table(rows, ("name", "chain", "task", "best", "variant", "where"))
            for r in rows:
                if r.get("broken"):
                    click.echo(f"broken: {r['name']}: {r['broken']}", err=True)
        return
    rows = []
    for s in registry().list(kind):
        rows.append(spec_dict(s))
        if getattr(s, "default", False) and kind == "sources":
            rows[-1]["description"] = f"(the default when --stages names no source) {s.description}"
        for arg, line in getattr(s, "choices", {}).items():  # e.g. every catalogue entry of `ssl:<method>`
            rows.append({"name": f"{s.name}:{arg}", "plugin": s.plugin, "description": line})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        print_table(rows, COLUMNS[kind])


def weights_rows() -> list[dict]:
    """Local checkpoints (broken folders marked, not fatal), then catalogue entries not shadowed by a local
    one (``medzoo.load`` looks in that order)."""
    from . import store, zoo

    rows: list[dict[str, Any]] = []
    good, broken = store.scan_local()
    variants = variant_texts(good)
    for ckpt in good:
        lin = ckpt.lineage
        last = lin.last
        value = last.best_value if last else None
        rows.append({"name": ckpt.name, "arch": lin.arch,
                     "chain": " > ".join(lin.public_chain()), "task": lin.task,
                     "best": f"{last.best.get('metric')} {value:.4f}" if last and value is not None else "-",
                     "variant": variants.get(ckpt.name, ""), "where": str(ckpt.path)})
    for path, why in broken:
        rows.append({"name": path.name, "arch": None, "chain": "BROKEN (see `broken`)", "task": "-", "best": "-",
                     "variant": "", "where": str(path), "broken": why})
    local = {r["name"] for r in rows}
    for name, entry in sorted(zoo.catalogue().items()):
        if name not in local:
            rev = entry.get("revision")
            rows.append({"name": name, "arch": entry.get("arch"), "chain": entry.get("chain") or "?",
                         "task": entry.get("task"), "best": entry.get("metric") or "-", "variant": "",
                         "where": f"hf-hub:{entry['repo_id']}" + (f"@{rev}" if rev else "")})
    return rows


def variant_texts(ckpts) -> dict[str, str]:
    """What tells apart checkpoints of one chain (``name`` and its ``name~<key>`` variants): the seed and
    the recipe keys whose values differ; else the data or parent weights that differ."""
    groups: dict[str, list] = {}
    for c in ckpts:
        groups.setdefault(c.name.partition("~")[0], []).append(c)
    out = {}
    for group in groups.values():
        lasts = [c.lineage.last for c in group]
        if len(group) < 2 or any(s is None for s in lasts):
            for c, s in zip(group, lasts):
                if s is not None and s.seed is not None:
                    out[c.name] = f"seed={s.seed}"
            continue
        recipes = [s.recipe for s in lasts]
        keys = sorted(k for k in {k for r in recipes for k in r} - {"seed"}
                      if len({json.dumps(r.get(k), sort_keys=True, default=str) for r in recipes}) > 1)
        same_data = len({s.fingerprint for s in lasts}) == 1
        for c, s in zip(group, lasts):
            parts = [f"seed={s.seed}"] + [f"{k}={s.recipe.get(k)}" for k in keys]
            if not keys and not same_data:
                parts.append(f"data={s.fingerprint[:8]}")
            if not keys and same_data and len({x.parent_sha256 for x in lasts}) > 1:
                parts.append(f"parent={s.parent_sha256[:8]}")
            out[c.name] = " ".join(parts)
    return out


@cli.command()
@click.argument("name")
def info(name):
    """Describe one entry: what it is, which plugin provides it, its defaults."""
    reg = registry()
    found = []
    for kind in KINDS:
        try:
            found.append((kind, reg.resolve(kind, name)))
        except MedzooError:
            # a name that needs an argument (`top`, `lld`, `imagefolder`) is still described without one
            spec = reg.entries[kind].get(name.partition("@")[0].partition(":")[0])
            if spec is not None:
                found.append((kind, Ref(spec=spec, name=name)))
    if not found:
        reg.resolve("archs", name)  # raises with the did-you-mean of the most common case
    for kind, ref in found:
        d = spec_dict(ref.spec)
        plugin = reg.plugins.get(ref.spec.plugin)
        click.echo(f"{d.pop('name')} ({KINDS[kind].noun})")
        if plugin:
            click.echo(f"  plugin: {plugin.name} (package {plugin.package} {plugin.version})")
        d.pop("plugin", None)
        if ref.arg:
            click.echo(f"  argument: {ref.arg}")
        for key, value in ref.options.items():
            click.echo(f"  option {key}: {value}")
        for key, value in (getattr(ref.spec, "details", None) and ref.spec.details(ref.arg) or {}).items():
            click.echo(f"  {key}: {value}")
        for key, value in d.items():
            if value in ("", None, {}, ()) or key in ("takes_arg", "arg_help", "arg_required"):
                continue
            if isinstance(value, dict):
                click.echo(f"  {key}:")
                for k, v in value.items():
                    click.echo(f"    {k}: {v}")
            else:
                click.echo(f"  {key}: {', '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json):
    """Installed plugins, their package version and the hooks they implement."""
    rows = [dataclasses.asdict(p) for p in registry().plugins.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for p in rows:
        status = f"FAILED: {p['error']}" if p["error"] else ", ".join(p["hooks"])
        click.echo(f"{p['name']}  ({p['package']} {p['version']})  {status}")
        for entry in p["disabled"]:  # left out for a name clash (a warning said which)
            click.echo(f"  disabled: {entry}")


def _workers_option(ctx, param, value):
    """``--workers N|auto``: checked here so a typo fails before any dataset is opened."""
    if value is None or str(value).strip().lower() == "auto":
        return None if value is None else "auto"
    if not str(value).strip().isdigit():
        raise click.BadParameter(f"'{value}' is not a whole number >= 0 or auto")
    return int(value)


@cli.command()
@click.argument("arch")
@click.option("--stages", required=True, help="SOURCE,DATASET[,DATASET…], e.g. SOURCE,DATASET1,DATASET2 "
              "(no source = the default one first; `medzoo list sources` marks it).")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False), help="YAML: a section per stage "
              "(and 'defaults') of recipe keys.")
@click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a recipe key "
              "(KEY=VALUE alone: every stage). Repeatable.")
@click.option("--force", is_flag=True, help="Retrain stages even when a stored checkpoint matches.")
@click.option("--device", help="cpu, cuda, cuda:N or mps (default: the best available).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 autocast on GPUs that have it (else fp16 with a GradScaler) and on CPUs with native "
                   "bf16 (AVX512-BF16/AMX), else fp32.")
@click.option("--channels-last/--no-channels-last", default=None, help="Default: on for convolutional nets "
              "(transformers: only in fp32 on CPU).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--workers", default="auto", show_default=True, callback=_workers_option, metavar="N|auto",
              help="DataLoader worker processes; auto: min(8, usable cores) on CUDA, 0 on CPU.")
@click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images and bad rows (reported) instead of failing.")
@click.option("--allow-overlap", is_flag=True,
              help="Train although a stage's val/test images appear in an earlier stage's training data "
                   "(recorded in the lineage).")
@click.option("--trust-upstream", is_flag=True, help="Let a url: or catalogue source without a published checksum "
              "download and convert its pickled checkpoint once (restricted loader; same as MEDZOO_TRUST_UPSTREAM=1).")
@click.option("--log", "log_", metavar="NAME[,NAME…]", help="Send each stage's run to experiment trackers: "
              "tensorboard, mlflow (`medzoo list loggers`).")
@click.option("--tracking-uri", metavar="URI", help="The tracking server (MLflow; default MLFLOW_TRACKING_URI, else "
              "SQLite in $MEDZOO_HOME/mlruns).")
@click.option("--experiment", "experiment_name", metavar="NAME", help="Group the runs under this experiment "
              "(default 'medzoo').")
@click.option("--no-track-paths", is_flag=True, help="Send trackers no local path (checkpoint folder) and no error "
              "text, only its type (same as MEDZOO_TRACK_PATHS=0).")
def train(arch, stages, recipe_file, sets, force, device, precision, channels_last, compile_, workers, data_roots,
          skip_bad, allow_overlap, trust_upstream, log_, tracking_uri, experiment_name, no_track_paths):
    """Train ARCH through a chain of stages, one checkpoint per stage."""
    import os

    from .trainer import Runtime
    from .trainer import train as run_chain

    if trust_upstream:  # read by the weight source plugin, like --data-root's MEDZOO_DATA
        os.environ["MEDZOO_TRUST_UPSTREAM"] = "1"
    if no_track_paths:  # read by the tracking plugin when a run ends
        os.environ["MEDZOO_TRACK_PATHS"] = "0"

    if (tracking_uri or experiment_name) and not log_:
        raise MedzooError("--tracking-uri and --experiment say where --log sends runs; add --log mlflow (or "
                          "tensorboard) or drop them")
    roots = _data_roots(data_roots)
    runtime = Runtime(device=device, precision=precision, channels_last=channels_last, compile=compile_,
                      num_workers=workers, data_roots=roots, force=force, skip_bad=skip_bad,
                      allow_overlap=allow_overlap, log=log_ or (), tracking_uri=tracking_uri,
                      experiment=experiment_name)
    run_chain(arch, stages, overrides=list(sets), recipe_file=recipe_file, runtime=runtime)


@cli.command()
@click.argument("name")
@click.option("--dataset", help="Dataset to score (default: the last stage's); its classes must match the model's.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]))
@click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
@click.option("--device", help="cpu, cuda, cuda:N or mps (default: the best available).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--bootstrap", default=1000, show_default=True, help="Resamples for the 95% CIs of the AUC, the "
              "operating-point figures and the ECE (0: none).")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--out", type=click.Path(file_okay=False), help="Write the results to OUT/DATASET-SPLIT/ (default: "
              "the checkpoint's eval/ folder; only then are they recorded for its model card).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout (the other lines go to "
              "stderr).")
@click.option("--target-sensitivity", type=float, help="Choose the threshold on the validation split as the highest "
              "specificity at this sensitivity (e.g. 0.9) instead of Youden's J.")
@click.option("--target-specificity", type=float, help="Choose it as the highest sensitivity at this specificity.")
@click.option("--store-threshold", is_flag=True, help="Replace the operating point stored in the checkpoint with the "
              "one chosen now (a checkpoint without one stores its first, if chosen on its own dataset).")
def evaluate(name, dataset, split, data_roots, device, batch_size, bootstrap, seed, out, as_json, target_sensitivity,
             target_specificity, store_threshold):
    """Score checkpoint NAME on a dataset split: metrics.json, predictions.csv, ROC/PR/confusion plots."""
    import contextlib

    from .evaluation import evaluate as run

    # with --json, stdout carries the JSON alone (for jq and scripts); the progress lines go to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = run(name, dataset=dataset, split=split, data_root=_data_roots(data_roots), device=device,
                     batch_size=batch_size, bootstrap=bootstrap, seed=seed, out=out,
                     target_sensitivity=target_sensitivity, target_specificity=target_specificity,
                     store_threshold=store_threshold)
    if as_json:
        from .evaluation import json_safe

        click.echo(json.dumps(json_safe({"dataset": result.dataset, "split": result.split, "n_images": result.n,
                                         "metrics": result.metrics, "out": str(result.out_dir),
                                         "operating_point": result.details.get("operating_point")}), indent=2))


@cli.command()
@click.argument("name")
@click.option("--dataset", help="Dataset to score (default: the last stage's).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]))
@click.option("--right", default=16, show_default=True, help="How many of the least confident right answers to show.")
@click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
@click.option("--device", help="cpu, cuda, cuda:N or mps (default: the best available).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="HTML file (default: "
              "eval/errors-DATASET-SPLIT.html in the checkpoint).")
@click.option("--saliency/--no-saliency", default=None, help="Show each image's Grad-CAM map for the predicted "
              "class (default: on when the saliency extra, pip install 'medzoo[saliency]', is installed).")
@click.option("--overwrite", is_flag=True, help="Replace the -o file even when it is not a gallery medzoo wrote.")
def errors(name, dataset, split, right, data_roots, device, out, saliency, overwrite):
    """One self-contained HTML page of the images NAME got wrong (and the least confident right ones)."""
    from .gallery import gallery

    path, wrong, shown = gallery(name, dataset=dataset, split=split, data_root=_data_roots(data_roots), device=device,
                                 right=right, out=out, saliency=saliency, overwrite=overwrite)
    click.echo(f"{wrong} misclassified, {shown} least confident right ones: {path}")


@cli.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--seeds", help="Comma-separated seeds, e.g. 0,1,2 (default: the grid's 'seeds').")
@click.option("--out", type=click.Path(file_okay=False), help="Results folder (default: runs/<grid name>).")
@click.option("--device", help="cpu, cuda, cuda:N or mps (default: the grid's runtime, else the best available).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
              help="Default: the grid's, else auto.")
@click.option("--workers", "num_workers", callback=_workers_option, metavar="N|auto",
              help="DataLoader worker processes or auto (default: the grid's, else auto).")
@click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
@click.option("--check", is_flag=True, help="Resolve every cell (archs, chains, datasets, recipes) and print the "
              "plan; train nothing.")
@click.option("--log", "log_", metavar="NAME[,NAME…]", help="Experiment trackers for every trained stage "
              "(default: the grid's runtime 'log'); an MLflow experiment / a TensorBoard folder per grid.")
@click.option("--tracking-uri", metavar="URI", help="The tracking server (MLflow; default MLFLOW_TRACKING_URI, else "
              "SQLite in $MEDZOO_HOME/mlruns).")
@click.option("--no-track-paths", is_flag=True, help="Send trackers no local path (checkpoint folder) and no error "
              "text, only its type (same as MEDZOO_TRACK_PATHS=0).")
def experiment(grid, seeds, out, device, precision, num_workers, data_roots, check, log_, tracking_uri,
               no_track_paths):
    """Run a grid of archs × chains × targets × seeds (GRID.yaml), then write results.csv and report.md.

    Finished cells are skipped on a rerun (a killed grid resumes); a failed cell is reported and the grid goes on."""
    import os

    from .experiment import load_grid, parse_seeds, plan, run_grid

    if no_track_paths:  # read by the tracking plugin when a run ends
        os.environ["MEDZOO_TRACK_PATHS"] = "0"
    if check:
        for line in plan(load_grid(grid, seeds=parse_seeds(seeds))):
            click.echo(line)
        return

    result = run_grid(grid, seeds=parse_seeds(seeds), out=out, data_roots=_data_roots(data_roots), device=device,
                      precision=precision, num_workers=num_workers, log=log_, tracking_uri=tracking_uri)
    if result["failed"]:
        raise click.ClickException(f"{result['failed']} of {result['cells']} cells failed (see {result['report']}); "
                                   "rerun the same command to retry them")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False))
def report(folder):
    """(Re)build results.csv, report.md and plots/ of an experiment folder from its finished runs."""
    from .report import build_report

    click.echo(f"wrote {build_report(folder)}")


@cli.command()
@click.argument("name")
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="The Hub repo to create (if missing) and commit to.")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--dry-run", is_flag=True, help="Write the folder that would be uploaded, list it, send nothing.")
@click.option("--out", type=click.Path(file_okay=False), help="--dry-run folder (default $MEDZOO_HOME/publish/NAME).")
@click.option("--revision", help="Branch to commit to (created from main if missing; default main).")
@click.option("--commit-message", help="Default: 'medzoo: NAME'.")
@click.option("--allow-no-metrics", is_flag=True, help="Publish a checkpoint that has no evaluation metrics.")
@click.option("--license", "license_", metavar="ID", help="Hugging Face licence id of the weights, when the "
              "lineage's is unknown (or to name a stricter one); required then.")
@click.option("--allow-non-redistributable", is_flag=True, help="Publish although the upstream weights' terms "
              "forbid redistributing derived weights (only if those terms allow it for you).")
def publish(name, repo_id, private, dry_run, out, revision, commit_message, allow_no_metrics, license_,
            allow_non_redistributable):
    """Publish checkpoint NAME to the Hugging Face Hub (its library's layout + model card).

    Uses huggingface_hub's configuration: HF_TOKEN or `hf auth login`, HF_ENDPOINT."""
    from . import hub

    if dry_run:
        result = hub.dry_run(name, out, repo_id=repo_id, allow_no_metrics=allow_no_metrics, license=license_,
                             allow_non_redistributable=allow_non_redistributable)
        click.echo(f"dry run: nothing uploaded; {repo_id} would receive {result.folder}:")
        for f in result.files:
            click.echo(f"  {f}  ({(result.folder / f).stat().st_size} bytes)")
        return
    result = hub.publish(name, repo_id, private=private, revision=revision, commit_message=commit_message,
                         allow_no_metrics=allow_no_metrics, license=license_,
                         allow_non_redistributable=allow_non_redistributable)
    click.echo(f"published {name} to {result.url}")
    click.echo(f"commit {result.commit}  {result.commit_url}")
    click.echo(f"load it: medzoo.load('hf-hub:{repo_id}@{result.commit}')")
    if result.plain_code:  # the architecture's Hub layout says how its own library loads it
        click.echo("or without medzoo:\n" + "\n".join(f"  {line}" for line in result.plain_code.splitlines()))
    click.echo("catalogue entry (for a MEDZOO_CATALOGUE file or medzoo/catalogue.json):")
    click.echo(json.dumps({name: result.catalogue_entry}, indent=2))


@cli.command()
@click.argument("name")
@click.option("--repo-id", metavar="ORG/NAME", help="Repo id to show in the usage examples.")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the card here (default: print it).")
@click.option("--license", "license_", metavar="ID", help="The licence `publish --license ID` would name.")
def card(name, repo_id, out, license_):
    """Render the model card (README.md) of checkpoint NAME, to review it before publishing."""
    from . import cards, hub, licenses, store

    if repo_id is not None:
        hub.check_repo_id(repo_id)
    if license_ is not None and not licenses.is_id(license_):
        raise MedzooError(f"--license {license_!r} is not a Hugging Face licence id (e.g. cc-by-nc-4.0, mit)")
    text = cards.render(store.get_local(name), repo_id=repo_id, license=license_)
    if out:
        store.atomic_write(out, text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


# -- inference on new images, and exporting a split's images (medzoo.inference, medzoo.export) ---------

@cli.command("predict")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--out", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False),
              help="CSV to write: path, p_<class> per class, predicted, and decision at the "
              "checkpoint's stored operating point when it has one (segmentation: path, mask).")
@click.option("--masks", type=click.Path(file_okay=False), help="Segmentation: folder for the mask PNGs "
              "(default: OUT's name without .csv, plus -masks).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--device", help="cpu, cuda, cuda:N or mps (default: the best available).")
@click.option("--skip-bad", is_flag=True, help="Leave out files that cannot be read (with a warning) instead of "
              "stopping.")
@click.option("--data-root", "data_root", type=click.Path(file_okay=False),
              help="Folder that relative paths in a CSV of paths are under (default: the CSV's folder).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT that medzoo predict did not write (and "
              "saliency maps of the same names).")
@click.option("--saliency", type=click.Path(file_okay=False), help="Also write each image's saliency map for its "
              "predicted class into this folder (<stem>_saliency.png; needs medzoo[saliency]).")
@click.option("--saliency-method", type=click.Choice(["gradcam", "scorecam"]), default="gradcam", show_default=True,
              help="Grad-CAM, or the gradient-free Score-CAM (slow: about a minute per image on a CPU).")
def predict_cmd(name, paths, out, masks, batch_size, device, skip_bad, data_root, overwrite, saliency,
                saliency_method):
    """Run checkpoint NAME on image files, folders (recursive) or CSVs of paths, with the preprocessing it was
    trained with (read from its lineage)."""
    from .inference import run

    path, preds = run(name, list(paths), out=out, masks=masks, batch_size=batch_size, device=device,
                      skip_bad=skip_bad, root=data_root, overwrite=overwrite, saliency=saliency,
                      saliency_method=saliency_method)
    skipped = f" ({len(preds.skipped)} skipped)" if preds.skipped else ""
    click.echo(f"[{preds.checkpoint}] {len(preds)} predictions{skipped}: {path}")
    if saliency:
        click.echo(f"[{preds.checkpoint}] saliency maps ({saliency_method}): {saliency}")


@cli.group("data")
def data_group():
    """Download, check, cache, build and export datasets."""


@data_group.command("export")
@click.argument("dataset")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]))
@click.option("--limit", type=int, help="Export only the first N images of the split.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New folder to write (refused if it "
              "holds anything).")
@click.option("--data-root", "data_roots", multiple=True, metavar="[DATASET=]PATH", help=DATA_ROOT_HELP)
@click.option("--skip-bad", is_flag=True, help="Leave out files that cannot be read instead of stopping.")
def data_export(dataset, split, limit, out, data_roots, skip_bad):
    """Write DATASET's raw SPLIT images as PNG files plus labels.csv into OUT."""
    from .export import export_split

    folder, n = export_split(dataset, out, split=split, limit=limit, data_root=_data_roots(data_roots),
                             skip_bad=skip_bad)
    click.echo(f"{n} {split} images of {dataset}: {folder}")


def _format_warning(message, category, *args, **kwargs):
    if issubclass(category, MedzooWarning):
        return f"medzoo: warning: {message}\n"
    return _default_format(message, category, *args, **kwargs)


_default_format = warnings.formatwarning


def main(argv: list[str] | None = None) -> None:
    warnings.formatwarning = _format_warning
    try:
        registry().add_commands(cli)
    except MedzooError as exc:  # plugin problems (name clashes, failing hooks) are warnings; this is anything else
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli.main(args=argv, prog_name="medzoo")


if __name__ == "__main__":
    main()
