"""Fetch one published file: resumable, checked against its published md5, moved into place only when complete.

The transfer is huggingface_hub's ``http_get`` (already a dependency): it resumes with an HTTP Range request,
starts over cleanly when a server ignores the Range, retries dropped connections and draws the progress bar.
This module adds what makes a dataset file trustworthy: the ``.part`` file a rerun continues, the hash check,
the atomic rename, and never deleting a file medzoo did not write.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from .registry import MedzooError

try:
    import httpx2 as _http  # huggingface_hub 2.x
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    import httpx as _http  # type: ignore[no-redef]

_NET_ERRORS = (OSError, _http.HTTPError)


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the published checksum's algorithm, not a security measure
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch(url: str, dest: str | Path, *, md5: str, fix: str = "") -> bool:
    """Download ``url`` to ``dest`` unless ``dest`` is already there with this md5; True when it downloaded.

    Bytes go to ``<dest>.part``, which a rerun after an interruption continues from where it stopped. A
    download whose md5 differs is removed (medzoo wrote it) and refused; an existing ``dest`` with the wrong
    md5 is refused and left alone (medzoo did not write it). ``fix`` is appended to those errors (e.g. a
    mirror to try)."""
    dest = Path(dest)
    md5 = md5.lower()
    if dest.exists():
        got = md5_file(dest)
        if got == md5:
            return False
        raise MedzooError(f"{dest} exists but its md5 is {got}, not the published {md5}: it is not the released "
                          "file (an older release, or damaged); move it away and rerun to download it")
    from huggingface_hub.file_download import http_get

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    with open(part, "ab") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MedzooError(f"{part} is being written by another download; wait for it to finish") from None
        resume = f.seek(0, os.SEEK_END)
        try:
            http_get(url, f, resume_size=resume, displayed_filename=dest.name)
        except _NET_ERRORS as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if not (status == 416 and resume):  # 416: the part already holds the whole file; the md5 decides
                f.flush()
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if f.tell() == 0:
                    part.unlink()  # ours and empty: nothing to continue from
                    raise MedzooError(f"downloading {url} failed ({why}); rerun when it is reachable{fix}") from None
                raise MedzooError(f"downloading {url} failed ({why}); {f.tell()} bytes kept in {part}: "
                                  f"rerun to continue{fix}") from None
        f.flush()
        os.fsync(f.fileno())
    got = md5_file(part)
    if got != md5:
        part.unlink()
        raise MedzooError(f"{url}: md5 {got}, expected {md5}; the download was removed: rerun to download it "
                          f"again{fix}")
    os.replace(part, dest)
    return True
