"""How an architecture's checkpoints are laid out on the Hugging Face Hub: a trait of its ``ArchSpec``.

The plugin that registers an architecture says which library's layout it publishes in, so ``medzoo publish``,
``medzoo.load`` and the model card hold no library-specific branches. medzoo's own layout
(:data:`MEDZOO_LAYOUT`: ``config.json`` with the lineage under ``"medzoo"`` beside ``model.safetensors``) is
the default: such a model loads with ``medzoo.load`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEDZOO_JSON = "medzoo.json"  # medzoo's config when the library writes config.json itself


@dataclass(frozen=True)
class HubLayout:
    """A Hub layout.

    ``name`` is how ``medzoo publish`` reports it; ``library`` the library's display name (model card);
    ``hf_library`` the Hub's ``library_name`` id, so the Hub offers its own "use this model" snippet (None:
    the Hub knows no loader for it); ``write(model, folder)``, when given, writes the library's own files
    (``config.json`` included) from the built model, and medzoo's config then goes to ``medzoo.json``;
    ``load_code(repo_id=, num_classes=, in_chans=, image_size=) -> str`` is the Python a plain user of the
    library runs to load the published weights without medzoo (None: medzoo only); ``citation`` is the
    library's, listed on model cards; ``recognise(config) -> bool`` tells the library's own ``config.json``
    apart, so loading a repo the library wrote without medzoo names the library's loader.
    """

    name: str
    library: str = "medzoo"
    hf_library: str | None = None
    write: Callable[[Any, Path], None] | None = None
    load_code: Callable[..., str] | None = None
    citation: str = ""
    recognise: Callable[[dict[str, Any]], bool] | None = None

    @property
    def lineage_file(self) -> str:
        """The file that holds medzoo's config (the lineage under ``"medzoo"``)."""
        return MEDZOO_JSON if self.write is not None else "config.json"

    def plain_code(self, repo_id: str, *, num_classes: int, in_chans: int, image_size: int | None) -> str:
        """The library's own loading code for ``repo_id``; '' when only medzoo loads it."""
        if self.load_code is None:
            return ""
        return self.load_code(repo_id=repo_id, num_classes=num_classes, in_chans=in_chans,
                              image_size=image_size).strip()


MEDZOO_LAYOUT = HubLayout(name="medzoo")


def layout_of(spec: Any) -> HubLayout:
    """The layout an ``ArchSpec`` publishes in (callers resolve the architecture in the registry first, so an
    unknown one is refused: a checkpoint is never published or carded on a guess about its library)."""
    return spec.hub_layout or MEDZOO_LAYOUT


def foreign_hint(config: dict[str, Any], repo_id: str, specs: Any) -> str:
    """For a ``config.json`` without medzoo's lineage: how the library that wrote it loads it ('' if unknown);
    ``specs``: the registered ``ArchSpec``s whose layouts may recognise it."""
    for spec in specs:
        layout = spec.hub_layout
        if layout is not None and layout.recognise is not None and layout.recognise(config):
            code = layout.plain_code(repo_id, num_classes=0, in_chans=3, image_size=None)
            if code:
                return f"; it looks like a {layout.library} model: load it with {'; '.join(code.splitlines())}"
    return ""
