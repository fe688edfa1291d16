"""The plugin API: the one module a medzoo plugin imports.

Everything a plugin needs to add architectures, datasets, freeze policies, weight sources, key maps and CLI
commands is here; the rest of ``medzoo`` is internal and may change without notice. First-party plugins in
``plugins/`` import only this module (tests/test_layering.py checks), so what they do, a third-party package can
do too. docs/plugins.md walks through docs/example_plugin/, a complete package written against it. Every name
below is public and documented here; its own docstring has the details.

Hooks and specs
    ``hookimpl``: marks a plugin module's hook functions (``register_archs(register)``, ``register_datasets``,
    ``register_freeze_policies``, ``register_weight_sources``, ``register_key_maps``,
    ``register_loggers``, ``register_preprocess_steps``, ``register_readers``, ``register_commands(cli)``).
    ``ArchSpec``, ``DatasetSpec``, ``FreezePolicySpec``, ``WeightSourceSpec``, ``KeyMapSpec``, ``LoggerSpec``,
    ``PreprocessStepSpec``, ``ReaderSpec``: what a hook registers (frozen dataclasses; ``medzoo info NAME`` prints
    their fields). Names are global per kind: a name another plugin already has is disabled with a warning
    (medzoo's own plugins win).
    An architecture's traits (fixed input size, channels_last, group prefixes, rebuild, citation; the
    ``ArchSpec`` docstring) include ``HubLayout``: how it is published and loaded without medzoo (timm's,
    smp's, MONAI's layouts come from their plugins); ``MEDZOO_LAYOUT``, the default, loads with medzoo only.
    ``Ref``: a resolved name — ``spec`` (the registered spec), ``arg`` (text after ':' or None), ``options``
    (``@key=value`` pairs, text) and ``name`` (as written). A weight source's ``load(arch=…)`` receives one.
    ``registry()``: the process-wide registry; ``registry().resolve(kind, name) -> Ref`` with ``kind`` one of
    ``archs``, ``datasets``, ``policies``, ``sources``, ``keymaps``, ``loggers``, ``steps``, ``readers``
    (refuses unknown names with a did-you-mean); ``registry().list(kind)``: the registered specs, sorted by name;
    ``registry().entries[kind]``: ``{name: spec}`` for a lookup that may miss (read-only: register through hooks).

Errors and messages
    ``MedzooError``: raise it for anything the user can fix; its text is one line naming the problem and the fix
    (the CLI prints ``Error: …`` and exits 1). ``MedzooWarning``: warn with it (``warnings.warn(text,
    MedzooWarning)``) for what does not stop the run. ``did_you_mean(name, choices)``: ``"; did you mean 'x'?"``
    or ``""``, to append to such a line. ``log(*args)``: print a progress line (only on the first process of a
    distributed run).

Data (a dataset's ``open(root=, arg=)`` returns a ``DataSource``)
    ``DataSource(name, task, classes, records, *, ignore_index=, meta=, source_files=, generated=)``: subclass it
    and implement ``read(record)`` (and ``read_mask`` for segmentation); ``prepare``/``domain_steps`` are its
    preprocessing hooks (docs/plugins.md); ``in_memory()`` returns ``(images, masks)`` when the pixels are arrays in
    memory (hashed whole for the data identity). ``ArraySource``: a DataSource over in-memory arrays indexed by
    ``Record.meta['index']``. ``Record(id, label, split, patient, mask, meta, files)``: one image; ``label`` is the
    class index (an int into ``classes``), a 0/1 list per class for multilabel, None for segmentation. ``SPLITS``:
    ``("train", "val", "test")``. ``data_root(name, root)``: the dataset's folder from
    ``--data-root``/``MEDZOO_DATA_<NAME>``/``MEDZOO_DATA``, or a MedzooError linking to ``DatasetSpec.docs``.
    ``parse_data_roots(values)``, ``root_for(roots, name)``, ``DATA_ROOT_HELP``: a command's own ``--data-root``
    option, read as ``medzoo train`` reads it. ``open_dataset(name, root, preprocess=)``: open and validate a
    registered dataset (labels, classes, leakage) as training does, preprocessed into the cache when asked.
    ``assign_splits(records, fractions, seed)``: splits by patient; ``split_official(records)``: keeps an official
    test set, leak-free; ``check_leakage(records, name)``: refuses a patient in two splits. ``bad_input(where,
    problem)``: an unreadable file or row — raised as a MedzooError, or recorded and returned under ``--skip-bad``
    (``skipping_bad()`` is that context). ``file_digests(paths)``: content digests of files, cached by stat.

Preprocessing and caches
    ``PreprocessConfig``: the cached preprocessing a recipe's ``preprocess`` asks for (size, fit, channels,
    dtype, …); ``fit_pair(img, mask, cfg)``: resize/fit an image and its mask to it; ``to_channels(img, n)``:
    grey or RGB. ``cache_home()``: the folder of medzoo's caches; ``tmp_folder(final)``: the temporary sibling a
    build writes before ``os.replace``; ``clean_stale_tmp(folder)``: removes such folders of dead processes
    only; ``truncate_npy(path, n)``: cut a ``.npy`` to its first ``n`` rows in place (a build that left rows
    out). ``RECIPE_DEFAULTS``: the default recipe every stage starts from (read-only).
    ``PreprocessStepSpec``: a named step of ``PreprocessConfig.steps`` (``breast_mask``, ``flip_to:left``,
    ``clahe:2``), run on the raw pixels by ``DataSource.prepare`` for any dataset (docs/datasets/README.md).
    ``ReaderSpec``: reads one image file by suffix or sniffing, for ``medzoo predict`` (docs/inference.md).

Near-duplicate hashing (dataset builders)
    ``grey8(img)``: the 8-bit grey image hashes are computed on; ``exact_hash(grey)``, ``phash(grey)``: 64-bit
    exact and perceptual hashes; ``HASH_DTYPE``: their numpy dtype; ``HashIndex``: near-duplicate lookup by
    Hamming distance; ``Hashes``: one dataset's hashes, row-aligned with its ids.

Licences
    ``license_id(text)``: a licence as a Hugging Face / SPDX id ('other', 'unknown' when not stated);
    ``url_of(id)``: the licence text's URL; ``most_restrictive(ids)``: what a model trained under all inherits.

Models and weights
    ``SourceWeights(state_dict, tag, sha256, …)``: what a weight source's ``load`` returns, with provenance
    fields (url, license, citation, method, redistributable). ``Transfer``: what a segmentation arch's
    ``load_parent`` returns (tensors matched, head state). ``create_model(name, num_classes=, in_chans=)``: a
    registered arch, untrained. ``block_groups(model)``: parameter names in groups from input to head (freeze
    policies); ``classifier_names(model)``: the head's parameter names. ``stock_timm_name(ref)``: the timm
    architecture behind an arch Ref, or None. ``read_weights(path, expected, origin)``: the one safetensors
    reader, refusing a file whose sha256 differs from an expected one; ``load_safetensors(path)``: tensors of a
    safetensors file without a hash policy; ``sha256_file(path)``. ``read_checkpoint(path)``: a stored medzoo
    checkpoint folder; ``CHECKPOINT_CONFIG``/``CHECKPOINT_WEIGHTS``: its file names. ``locate(name)``: a model's
    files by medzoo name, folder or ``HF_PREFIX`` (``hf-hub:``) name; ``read_located_weights(found)``: their
    verified tensors. ``feature_layer(model)``: the default saliency layer (the last stage of timm's
    ``feature_info`` the model still has), for an ``ArchSpec.saliency_target`` that starts from it.

Files
    ``medzoo_home()``: ``$MEDZOO_HOME``; ``slug(text)``: a name part safe in file names; ``atomic_write(path,
    data)``: readers see the old content or the new, never a part.
    ``swap_dir(tmp, final)``: move a completed folder into place; the old one is renamed aside first, so for a
    moment neither is at ``final`` (readers retry or fail, never see a half folder) (a
    concurrent writer that got there first wins, with a MedzooError).
    ``download_file(url, dest, md5=)``: a resumable, md5-checked download into place (a dataset's
    ``download``); ``md5_file(path)``.

Experiment trackers (``train --log``; docs/tracking.md)
    ``LoggerSpec.create(RunInfo)`` returns a ``Logger``: ``start(StageRun, params, lineage)``, ``log_epoch(epoch,
    metrics)``, ``end(Outcome)``. ``RunInfo``: the chain (arch, experiment, group, tracking URI); ``StageRun``: one
    trained stage (name, dataset, key, seed); ``Outcome``: how it ended (status, checkpoint, lineage, history).
"""

from __future__ import annotations

from .cache import (
    PreprocessConfig,
    cache_home,
    clean_stale_tmp,
    open_dataset,
    tmp_folder,
    truncate_npy,
)
from .data import (
    DATA_ROOT_HELP,
    SPLITS,
    ArraySource,
    DataSource,
    Record,
    assign_splits,
    bad_input,
    check_leakage,
    data_root,
    parse_data_roots,
    root_for,
    skipping_bad,
    split_official,
)
from .download import fetch as download_file
from .download import md5_file
from .hookspecs import hookimpl
from .hublayout import MEDZOO_LAYOUT, HubLayout
from .identity import file_digests
from .licenses import license_id, most_restrictive, url_of
from .models import (
    SourceWeights,
    Transfer,
    block_groups,
    classifier_names,
    create_model,
    stock_timm_name,
)
from .overlap import HASH_DTYPE, Hashes, HashIndex, exact_hash, grey8, phash
from .recipe import DEFAULTS as RECIPE_DEFAULTS
from .registry import (
    ArchSpec,
    DatasetSpec,
    FreezePolicySpec,
    KeyMapSpec,
    LoggerSpec,
    MedzooError,
    MedzooWarning,
    PreprocessStepSpec,
    ReaderSpec,
    Ref,
    WeightSourceSpec,
    did_you_mean,
    registry,
)
from .resize import fit_pair, to_channels
from .saliency import feature_layer
from .stage import log
from .store import CONFIG as CHECKPOINT_CONFIG
from .store import WEIGHTS as CHECKPOINT_WEIGHTS
from .store import atomic_write, read_checkpoint, slug, swap_dir
from .store import home as medzoo_home
from .tracking import Logger, Outcome, RunInfo, StageRun
from .weights import load_file as load_safetensors
from .weights import read as read_weights
from .weights import sha256_file
from .zoo import HF_PREFIX, locate
from .zoo import read_weights as read_located_weights

__all__ = [
    # hooks and specs
    "hookimpl", "ArchSpec", "DatasetSpec", "FreezePolicySpec", "WeightSourceSpec", "KeyMapSpec", "Ref", "registry",
    # experiment trackers (`train --log`)
    "LoggerSpec", "Logger", "RunInfo", "StageRun", "Outcome",
    # architecture traits
    "HubLayout", "MEDZOO_LAYOUT",
    # errors and messages
    "MedzooError", "MedzooWarning", "did_you_mean", "log",
    # data
    "DataSource", "ArraySource", "Record", "SPLITS", "DATA_ROOT_HELP", "data_root", "parse_data_roots", "root_for",
    "skipping_bad", "open_dataset",
    "assign_splits", "split_official", "check_leakage", "bad_input", "file_digests",
    # preprocessing and caches
    "PreprocessConfig", "fit_pair", "to_channels", "cache_home", "tmp_folder", "clean_stale_tmp", "truncate_npy",
    "RECIPE_DEFAULTS", "PreprocessStepSpec", "ReaderSpec",
    # near-duplicate hashing (dataset builders)
    "HASH_DTYPE", "Hashes", "HashIndex", "exact_hash", "grey8", "phash",
    # licences
    "license_id", "most_restrictive", "url_of",
    # models and weights
    "SourceWeights", "Transfer", "block_groups", "classifier_names", "create_model", "stock_timm_name",
    "read_weights", "load_safetensors", "sha256_file", "read_checkpoint", "CHECKPOINT_CONFIG", "CHECKPOINT_WEIGHTS",
    "HF_PREFIX", "locate", "read_located_weights",
    # saliency (ArchSpec.saliency_target)
    "feature_layer",
    # files
    "medzoo_home", "slug", "atomic_write", "swap_dir",
    # downloads (resumable, md5-checked)
    "download_file", "md5_file",
]
