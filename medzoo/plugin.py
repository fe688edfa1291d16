"""The plugin API: the one module a medzoo plugin imports.

Everything a plugin needs to add architectures, datasets, freeze policies, weight sources, key maps and CLI
commands is here; the rest of ``medzoo`` is internal and may change without notice. First-party plugins in
``plugins/`` import only this module (a test checks), so what they can do, a third-party package can do too.
docs/plugins.md walks through a complete plugin written against it.

- Hooks: ``hookimpl`` marks the functions of a plugin module (see ``medzoo.hookspecs``).
- Specs: ``ArchSpec``, ``DatasetSpec``, ``FreezePolicySpec``, ``WeightSourceSpec``, ``KeyMapSpec``.
- Errors: raise ``MedzooError`` for anything the user can fix (one line: the problem and the fix); warn with
  ``MedzooWarning``.
- Data: subclass ``DataSource`` (or use ``ArraySource``) holding ``Record`` items; ``bad_input`` reports an
  unreadable file (raised, or skipped under ``--skip-bad``); ``assign_splits``/``split_official`` split by patient.
- Weights: a weight source returns ``SourceWeights``; ``read_weights`` is the one safetensors reader (hash-checked).
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
from .hookspecs import hookimpl
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
from .resize import fit_pair, to_channels
from .registry import (
    ArchSpec,
    DatasetSpec,
    FreezePolicySpec,
    KeyMapSpec,
    MedzooError,
    MedzooWarning,
    WeightSourceSpec,
    did_you_mean,
    registry,
)
from .stage import log
from .store import CONFIG as CHECKPOINT_CONFIG
from .store import WEIGHTS as CHECKPOINT_WEIGHTS
from .store import atomic_write, read_checkpoint, slug, swap_dir
from .store import home as medzoo_home
from .weights import load_file as load_safetensors
from .weights import read as read_weights
from .weights import sha256_file
from .zoo import HF_PREFIX, locate
from .zoo import read_weights as read_located_weights

__all__ = [
    # hooks and specs
    "hookimpl", "ArchSpec", "DatasetSpec", "FreezePolicySpec", "WeightSourceSpec", "KeyMapSpec", "registry",
    # errors and messages
    "MedzooError", "MedzooWarning", "did_you_mean", "log",
    # data
    "DataSource", "ArraySource", "Record", "SPLITS", "DATA_ROOT_HELP", "data_root", "parse_data_roots", "root_for",
    "skipping_bad", "open_dataset",
    "assign_splits", "split_official", "check_leakage", "bad_input", "file_digests",
    # preprocessing and caches
    "PreprocessConfig", "fit_pair", "to_channels", "cache_home", "tmp_folder", "clean_stale_tmp", "truncate_npy",
    "RECIPE_DEFAULTS",
    # near-duplicate hashing (dataset builders)
    "HASH_DTYPE", "Hashes", "HashIndex", "exact_hash", "grey8", "phash",
    # licences
    "license_id", "most_restrictive", "url_of",
    # models and weights
    "SourceWeights", "Transfer", "block_groups", "classifier_names", "create_model", "stock_timm_name",
    "read_weights", "load_safetensors", "sha256_file", "read_checkpoint", "CHECKPOINT_CONFIG", "CHECKPOINT_WEIGHTS",
    "HF_PREFIX", "locate", "read_located_weights",
    # files
    "medzoo_home", "slug", "atomic_write", "swap_dir",
]
