"""What a dataset *is*, computed by the core for every dataset: its records and the content of the files
they come from.

A dataset plugin declares its files (``Record.files`` per image, ``DataSource.source_files`` for files
shared by all records, such as an npz or an image store), or that its pixels are generated
(``DataSource.generated``); the core hashes them. A file's content identity is a blake2b digest of its
bytes, cached by (path, size, mtime_ns, inode) under ``$MEDZOO_HOME/cache/files`` so an unchanged dataset
is not re-read every run; ``verify=True`` re-hashes every file whatever its stat says (a file rewritten
with the same size and a restored mtime, as ``cp -p``, ``rsync -a`` and unzip leave it).
A source that declares nothing is identified by its pixels, with a warning.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .naming import public_dataset

if TYPE_CHECKING:
    from .data import DataSource

log = logging.getLogger("medzoo.data")

IDENTITY_VERSION = 2  # bump when what the fingerprint covers changes
_CHUNK = 1 << 20


def _files_cache() -> Path:
    from .store import home

    return home() / "cache" / "files"


def hash_file(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Shard:
    """The cached digests of one folder's files, one line per file: ``name<TAB>stat<TAB>digest`` where stat
    is ``size:mtime_ns:inode:device``. Plain lines, not JSON: an unchanged 10k-file dataset is checked in
    about the time of its stat calls."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = _files_cache() / (hashlib.sha1(folder.encode()).hexdigest()[:20] + ".tsv")
        self.files: dict[str, tuple[str, str]] = {}
        self.dirty = False
        try:
            head, _, body = self.path.read_text(encoding="utf-8").partition("\n")
        except (OSError, UnicodeDecodeError):
            return
        if head != f"#medzoo-file-hashes\t{folder}":
            return
        for line in body.split("\n"):
            name, stat, digest = (line.split("\t") + ["", ""])[:3]
            if digest:
                self.files[name] = (stat, digest)

    def save(self) -> None:
        if not self.dirty:
            return
        lines = [f"#medzoo-file-hashes\t{self.folder}"]
        # a name with a tab or newline cannot be a line: it is simply re-hashed each time
        lines += [f"{n}\t{s}\t{d}" for n, (s, d) in self.files.items() if "\t" not in n and "\n" not in n]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text("\n".join(lines), encoding="utf-8")
            os.replace(tmp, self.path)  # concurrent runs: the last complete write wins, never a torn file
        except OSError as exc:  # a read-only home only costs re-hashing next time
            log.debug("could not write the file-hash cache %s: %s", self.path, exc)
            tmp.unlink(missing_ok=True)


def file_digests(paths: Iterable[str | Path], *, verify: bool = False,
                 changed: list[str] | None = None) -> dict[str, str]:
    """``{path: content digest}`` ('missing' for a file that is not there). A file whose (size, mtime_ns,
    inode, device) matches the cache is not read, unless ``verify``; under ``verify`` the paths whose bytes
    no longer match their cached digest are appended to ``changed``."""
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for p in paths:
        p = os.fspath(p)
        folder, name = os.path.split(p)
        by_folder.setdefault(folder, []).append((p, name))
    out: dict[str, str] = {}
    for folder, items in by_folder.items():
        shard = _Shard(os.path.abspath(folder))
        files = shard.files
        for p, name in items:
            try:
                st = os.stat(p)
            except OSError:
                out[p] = "missing"
                continue
            stat = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"
            cached = files.get(name)
            if cached is not None and cached[0] == stat and not verify:
                out[p] = cached[1]
                continue
            try:
                digest = hash_file(Path(p))
            except OSError:
                out[p] = "unreadable"
                continue
            if verify and changed is not None and cached is not None and cached[0] == stat and cached[1] != digest:
                changed.append(p)
            if cached != (stat, digest):
                files[name] = (stat, digest)
                shard.dirty = True
            out[p] = digest
        shard.save()
    return out


def _pixel_digest(source: DataSource) -> str:
    """The pixels (and masks) of every record: correct for any source, but it reads every image."""
    h = hashlib.blake2b(digest_size=16)
    arrays = source.in_memory()
    if arrays is not None:  # in-memory arrays are the data: hashing them whole is cheap and needs no declaration
        images, masks = arrays
        h.update(np.ascontiguousarray(images).tobytes())
        if masks is not None:
            h.update(np.ascontiguousarray(masks).tobytes())
        return h.hexdigest()
    log.warning("dataset '%s' declares no files: medzoo identified it by reading all %d images' pixels (slow); "
                "declare Record.files (or DataSource.source_files, or DataSource.generated) in its plugin, "
                "see docs/plugins.md", source.name, len(source.records))
    for r in sorted(source.records, key=lambda r: r.id):
        img = np.ascontiguousarray(source.read(r))
        h.update(f"{r.id}|{img.dtype}|{img.shape}".encode())
        h.update(img.tobytes())
        if source.task == "segmentation":
            h.update(np.ascontiguousarray(source.read_mask(r)).tobytes())
    return h.hexdigest()


def content(source: DataSource, *, verify: bool = False, changed: list[str] | None = None) -> dict:
    """What the records' pixels come from: per record the digests of its files ('+'-joined), the
    source-level files' digests, a generator's declaration, or (nothing declared) a digest of the pixels."""
    gc_was_on = gc.isenabled()
    gc.disable()  # tens of thousands of small objects, none cyclic: collections cost a third of the time
    try:
        per_record = [(r.id, source.files(r)) for r in source.records]
        shared = [os.fspath(p) for p in source.source_files]
        paths: list[str | Path] = [p for _, ps in per_record for p in ps]
        if paths or shared:
            digests = file_digests([*paths, *shared], verify=verify, changed=changed)
            return {"records": {rid: "+".join(digests[os.fspath(p)] for p in ps) for rid, ps in per_record},
                    # by file name, not path: where the data lives is not part of what it is
                    "shared": sorted([os.path.basename(p), digests[p]] for p in shared)}
    finally:
        if gc_was_on:
            gc.enable()
    if source.generated:
        return {"generated": source.generated}
    return {"pixels": _pixel_digest(source)}


def fingerprint(source: DataSource, files: dict) -> str:
    """sha256 of the records (ids, labels, splits, patients), the classes, the options that changed the
    data (rows and files left out by --skip-bad) and the files' content."""
    per = files.get("records", {})
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        rows = [[r.id, r.label, r.split, r.patient, per.get(r.id, "")]
                for r in sorted(source.records, key=lambda r: r.id)]
        # by public name: a path-given dataset keeps its identity when its folder moves (content guards the data)
        blob = json.dumps({"identity": IDENTITY_VERSION, "name": public_dataset(source.name), "task": source.task,
                           "classes": source.classes, "rows": rows, "skipped": sorted(source.meta.get("skipped", [])),
                           "content": {k: v for k, v in files.items() if k != "records"}},
                          sort_keys=True, default=str)
    finally:
        if gc_was_on:
            gc.enable()
    return hashlib.sha256(blob.encode()).hexdigest()


def pixels_key(source: DataSource) -> str:
    """The identity of the pixels alone (record ids and file content, not labels or splits): what a store
    of per-image hashes is keyed by, so re-splitting or relabelling the same images reuses it."""
    blob = json.dumps({"identity": IDENTITY_VERSION, "name": public_dataset(source.name), "content": source.content(),
                       "ids": sorted(r.id for r in source.records)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
