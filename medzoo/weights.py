"""The one weights reader: safetensors only, recognised by parsing its header, with one sha256 policy.

Every reader of weights (a chain's parent or reused stage, ``medzoo.load``, the ``file:`` and ``hf-hub:``
sources, ``medzoo publish``) goes through :func:`read`:

- a file is safetensors when its header parses: 8-byte little-endian length N, N bytes of JSON, every
  tensor's ``data_offsets`` inside the file and matching its dtype and shape. Nothing is decided by the
  first bytes: a valid file whose header length starts with 0x80 is not a pickle;
- its sha256 is checked against every hash its metadata records: a mismatch is refused; a file with no
  recorded hash loads with a warning line saying it could not be verified.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .registry import MedzooError

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".ckpt"}
MAX_HEADER = 100_000_000  # safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


def warn(message: str) -> None:
    """A warning the user must see, as one line on stderr."""
    print(f"Warning: {message}", file=sys.stderr, flush=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def header_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a well-formed safetensors file, or None when it is one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            return f"header length {n} does not fit the file's {size} bytes"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data = size - 8 - n
    for name, t in header.items():
        if name == "__metadata__":
            if not isinstance(t, dict):
                return "its __metadata__ is not an object"
            continue
        try:
            begin, end = t["data_offsets"]
            count = math.prod(int(d) for d in t["shape"]) * DTYPE_BYTES[t["dtype"]]
        except (KeyError, TypeError, ValueError):
            return f"tensor '{name}' has no valid dtype/shape/data_offsets"
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data and end - begin == count):
            return f"tensor '{name}' has data_offsets {t['data_offsets']} outside the file's {data} data bytes"
    return None


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(3)
    # Only to word the refusal: torch.save writes a zip ('PK'), or a raw pickle (PROTO 0x80, protocol 2-5, then
    # an opcode, never 0). A safetensors header length starting 0x80 is followed by zero bytes up to 16 MB.
    return path.suffix in PICKLE_SUFFIXES or head[:2] == b"PK" or (
        len(head) == 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] != 0)


def load_file(path: str | Path) -> dict[str, Any]:
    """The tensors of a safetensors file (no hash policy: for medzoo's own run-folder state)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as st_load

    path = Path(path)
    if not path.is_file():
        raise MedzooError(f"weights file '{path}' does not exist; check the path")
    problem = header_problem(path)
    if problem is not None:
        if _looks_pickled(path):
            raise MedzooError(f"'{path}' is a pickle checkpoint, which medzoo never loads (unpickling can run code); "
                              "convert it once with `medzoo weights convert PATH --to x.safetensors` "
                              "(PyTorch's restricted loader: tensors only)")
        raise MedzooError(f"'{path}' is not a safetensors file ({problem}); re-export or re-download it")
    try:
        return st_load(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedzooError(f"'{path}' is not a readable safetensors file ({exc}); re-export it") from None


def verify(path: str | Path, expected: Iterable[str | None], origin: str) -> str:
    """The file's sha256, after the policy: refuse a mismatch with any recorded hash, warn when none is."""
    sha = sha256_file(path)
    recorded = [e for e in expected if e]
    if not recorded:
        warn(f"{origin} records no sha256 for its weights ({Path(path).name}), so they cannot be verified; "
             f"their sha256 is {sha}")
    for want in recorded:
        if sha != want:
            raise MedzooError(f"weights of {origin} ({path}) have sha256 {sha[:12]}…, not the {want[:12]}… its "
                              "metadata records (corrupted or tampered); delete them and re-train or re-download")
    return sha


def read(path: str | Path, expected: Iterable[str | None], origin: str) -> tuple[dict[str, Any], str]:
    """Verified tensors and their sha256 (see the module docstring for the policy)."""
    path = Path(path)
    if not path.is_file():
        raise MedzooError(f"{origin}: weights file '{path}' does not exist; re-train or re-download it")
    if header_problem(path) is not None:
        load_file(path)  # raises with the reason (pickle or not safetensors)
    sha = verify(path, expected, origin)
    return load_file(path), sha
