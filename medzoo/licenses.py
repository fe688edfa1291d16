"""Licences as data: Hugging Face / SPDX licence ids, how restrictive each is, and the one a model inherits.

Trained weights inherit the terms of the data they were trained on and of the weights they started from,
so a checkpoint's licence is the most restrictive of its stages' and its source weights' licences, in this
order (least to most restrictive):

    public domain (cc0-1.0, pddl) < permissive (mit, apache-2.0, bsd-3-clause, cc-by-*)
    < share-alike (cc-by-sa-*, odbl) < no-derivatives (cc-by-nd-*) < non-commercial (cc-by-nc-*)
    < non-commercial share-alike (cc-by-nc-sa-*) < non-commercial no-derivatives (cc-by-nc-nd-*)
    < other (custom terms, e.g. research use by agreement) < unknown (nobody recorded the terms)

"unknown" beats everything: ``medzoo publish`` refuses it unless the user names the licence (``--license``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# the ids the Hugging Face Hub accepts in a model card's ``license:`` that medzoo can rank
HF_LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc0-1.0", "pddl", "odbl", "cc-by-2.0", "cc-by-3.0",
               "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nd-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0",
               "cc-by-nc-4.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
               "other", "unknown"}
UNKNOWN, OTHER = "unknown", "other"
_UNSPECIFIED = ("", "unknown", "unspecified", "none", "not specified", "n/a", "?")

URLS = {
    "cc0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "mit": "https://opensource.org/license/mit",
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "bsd-3-clause": "https://opensource.org/license/bsd-3-clause",
}


def url_of(license_id: str) -> str | None:
    """The canonical text of a licence id, where there is one."""
    if license_id in URLS:
        return URLS[license_id]
    m = re.fullmatch(r"cc-(by(?:-nc)?(?:-sa|-nd)?)-(\d\.\d)", license_id)
    return f"https://creativecommons.org/licenses/{m.group(1)}/{m.group(2)}/" if m else None


def license_id(text: str | None) -> str:
    """A licence given as an id or as free text ('CC BY-NC 4.0', 'CC0-1.0 (generated)', 'unspecified …')
    as a Hugging Face licence id; 'other' for named custom terms, 'unknown' when nothing is specified."""
    raw = (text or "").strip().lower()
    if raw in HF_LICENSES:
        return raw
    t = re.sub(r"\(.*?\)", "", raw).strip()
    if t in _UNSPECIFIED or t.startswith(("unspecified", "unknown", "not specified")):
        return UNKNOWN
    t = t.replace("creative commons", "cc").replace("cc by", "cc-by").replace("cc0 ", "cc0-")
    t = re.sub(r"[\s_]+", "-", t)
    t = re.sub(r"-+", "-", t).strip("-")
    if t in ("apache", "apache2", "apache-2"):
        t = "apache-2.0"
    if t == "cc0":
        t = "cc0-1.0"
    return t if t in HF_LICENSES else OTHER


def rank(text: str | None) -> int:
    """How restrictive a licence is (see the module docstring for the order)."""
    hf = license_id(text)
    if hf == UNKNOWN:
        return 8
    if hf == OTHER:
        return 7
    parts = hf.split("-")
    if "nc" in parts:
        return 6 if "nd" in parts else 5 if "sa" in parts else 4
    if "nd" in parts:
        return 3
    if "sa" in parts or hf == "odbl":
        return 2
    return 0 if hf in ("cc0-1.0", "pddl") else 1


def most_restrictive(licenses: Sequence[str | None]) -> str:
    """The licence id a model trained under all of ``licenses`` inherits; 'unknown' when there are none."""
    ids = [license_id(x) for x in licenses]
    if not ids:
        return UNKNOWN
    top = max(ids, key=rank)
    # a non-commercial set next to a separate no-derivatives licence: both restrictions hold
    if rank(top) in (4, 5) and any(rank(i) == 3 for i in ids):
        version = top.rsplit("-", 1)[-1]
        return f"cc-by-nc-nd-{version}" if f"cc-by-nc-nd-{version}" in HF_LICENSES else "cc-by-nc-nd-4.0"
    return top


def is_id(text: str) -> bool:
    return text in HF_LICENSES
