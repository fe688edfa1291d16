"""Plugin discovery and the registry of architectures, datasets, freeze policies and weight sources.

Every plugin, first-party or not, is a module named by an entry point in the ``medzoo`` group.
Names may carry an argument (``timm:convnext_tiny``, ``file:/w.safetensors``, ``top:2``) and,
for architectures, options (``resnet50@truncate=1``).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs

if TYPE_CHECKING:
    from .hublayout import HubLayout

ENTRY_POINT_GROUP = "medzoo"
FIRST_PARTY = "medzoo"  # the distribution whose plugins win a name clash
TASKS = ("classification", "multilabel", "segmentation")


class MedzooError(Exception):
    """A user-facing error: one line that names the problem and the fix."""


class MedzooWarning(UserWarning):
    """Something the user should know that does not stop the run (printed as one ``medzoo: warning:`` line)."""


class MedzooPluginWarning(MedzooWarning):
    """A plugin failed to load or raised in a hook and was skipped."""


@dataclass(frozen=True)
class ArchSpec:
    """An architecture. ``build(num_classes=, in_chans=, img_size=, arg=, **options)`` returns an nn.Module.

    Traits: what the core asks of an architecture, filled in by its plugin (the core never checks names).

    - ``fixed_input_size``: the model is built for one image size (``img_size=`` reaches ``build`` and is
      recorded in the published config's ``model_args``); transformers with absolute position embeddings
      or fixed windows, e.g. what timm's ``pretrained_cfg['fixed_input_size']`` says.
    - ``channels_last``: the channels_last memory format speeds it up (convolutional nets); False for
      transformers, whose only convolution is the patch embedding (``medzoo.speed.channels_last``).
    - ``group_prefixes``: block groups from input to output, the last one the head, as parameter-name
      prefixes; a parameter joins the group of its longest matching prefix ('' matches every name), one
      matching none joins no group. Freeze policies get these groups (``groups=``). Empty: timm's coarse
      ``group_matcher`` where the model has one, else one group per top-level child.
    - ``hub_layout``: the ``medzoo.plugin.HubLayout`` it publishes in and loads from (None: medzoo's own,
      loadable with ``medzoo.load`` only); it also gives the model card's "how to load" code.
    - ``rebuild(config=, lineage=, num_classes=, in_chans=) -> nn.Module``: how ``medzoo.load`` builds the
      model a checkpoint's ``config.json`` describes, before loading its weights (None: ``build`` with the
      lineage's image size).
    - ``citation``: the architecture's paper, as the model card lists it (with the classifier's, for a
      segmentation architecture).
    - ``for_arg(arg) -> {field: value}``: trait values that depend on the ``name:<arg>`` argument (the
      ``timm:<name>`` architecture knows a model's traits only from its name); ``resolve`` applies them, so
      ``Ref.spec`` carries the argument's traits.
    """

    name: str
    build: Callable[..., Any]
    task: str = "classification"
    family: str = ""
    input_size: tuple[int, int, int] = (3, 224, 224)
    timm_name: str | None = None  # stock timm architecture, so published weights load in plain timm
    description: str = ""
    takes_arg: bool = False  # used as ``name:<arg>``
    arg_help: str = ""
    arg_required: bool = True
    options: Mapping[str, str] = field(default_factory=dict)  # ``@key=value`` options -> what they do
    # segmentation archs: the classification arch that classification stages of the chain train, and
    # ``load_parent(model, state, keep_head=, origin=) -> medzoo.plugin.Transfer`` mapping its weights in
    classifier: str | None = None
    load_parent: Callable[..., Any] | None = None
    plugin: str = ""
    # ``saliency_target(model) -> (layer, reshape)``: the layer Grad-CAM reads and, when its output is not
    # N×C×H×W (Swin's NHWC, ViT's tokens), a function making it so; None = the last stage of timm's feature_info
    saliency_target: Callable[[Any], tuple[Any, Callable[[Any], Any] | None]] | None = None
    fixed_input_size: bool = False
    channels_last: bool = True
    group_prefixes: tuple[tuple[str, ...], ...] = ()
    hub_layout: HubLayout | None = None
    rebuild: Callable[..., Any] | None = None
    citation: str = ""
    for_arg: Callable[[str], Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset. ``open(root=, arg=)`` returns a ``medzoo.plugin.DataSource`` for the data under ``root``.

    ``citation``: how its authors ask to be cited (the model card lists it for every stage trained on it;
    empty: the card points to ``docs``).
    """

    name: str
    open: Callable[..., Any]
    task: str = "classification"
    classes: tuple[str, ...] = ()  # empty when only the data knows them (imagefolder, medagg)
    modality: str = ""
    body_part: str = ""
    recipe: Mapping[str, Any] = field(default_factory=dict)  # default training recipe for a stage on it
    # Hugging Face / SPDX licence id ('cc-by-4.0', 'other' for custom terms, 'unknown' if unspecified) and the
    # URL of the licence or terms; a subset with other terms sets ``source.meta["license"/"license_url"]``
    license: str = "unknown"
    license_url: str = ""
    description: str = ""
    docs: str = ""
    takes_arg: bool = False
    arg_help: str = ""
    arg_required: bool = True
    plugin: str = ""
    # `medzoo data download NAME[:ARG]`: ``download(root=, arg=) -> str`` fetches open files into ``root`` (the
    # dataset's folder, --data-root's or $MEDZOO_DATA/<name>, maybe not there yet) and says what it did; a
    # dataset behind a licence form or portal has none and gives ``manual_steps`` (where to get it, the layout)
    download: Callable[..., str] | None = None
    manual_steps: str = ""
    # `medzoo data check`: ``missing(root=, arg=) -> [what of the expected layout is absent, full paths]``, with
    # ``root`` as ``open`` gets it
    missing: Callable[..., list[str]] | None = None
    citation: str = ""


@dataclass(frozen=True)
class FreezePolicySpec:
    """A freeze policy. ``apply(model, arg=, epoch=, epochs=, n_train=, groups=)`` sets ``requires_grad`` at each
    epoch start and may return ``{param_name: lr_scale}``, applied to that epoch (optimizer state kept).
    ``groups`` are the model's block groups, input to output, head last (``medzoo.models.block_groups`` with
    the architecture's ``ArchSpec.group_prefixes``); passed to an ``apply`` that takes ``groups`` or ``**ctx``.
    A policy that only picks another one (``auto``) gives ``resolve(arg=, n_train=, task=) -> policy name`` instead.
    ``check(arg)`` raises MedzooError on a bad argument, so a recipe naming ``lld:7`` fails when it is read,
    not after a stage is built."""

    name: str
    apply: Callable[..., Any] | None = None
    description: str = ""
    resolve: Callable[..., str] | None = None
    check: Callable[[str | None], Any] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    takes_arg: bool = False
    arg_help: str = ""
    arg_required: bool = True
    plugin: str = ""


@dataclass(frozen=True)
class WeightSourceSpec:
    """Where a chain's first weights come from. ``load(arch=, arg=)`` returns a ``medzoo.plugin.SourceWeights``."""

    name: str
    load: Callable[..., Any]
    description: str = ""
    takes_arg: bool = False
    arg_help: str = ""
    arg_required: bool = True
    choices: Mapping[str, str] = field(default_factory=dict)  # known arguments -> one line each (`list sources`)
    details: Callable[[str | None], Mapping[str, str]] | None = None  # `medzoo info NAME[:ARG]`: provenance lines
    plugin: str = ""
    # where a chain that names no source starts (``--stages DATASET,…``); exactly one registered source says so
    default: bool = False
    # how it shows in checkpoint names: the whole ``name:arg`` (slugged) by default; the default source without an
    # argument shows as nothing; True: by the weights' hash in the tag instead of the argument (a path or URL)
    named_by_hash: bool = False
    # the model card's ``base_model`` (a Hub id): called as ``base_model(arg=, tag=, timm_name=)``, None for none
    base_model: Callable[..., str | None] | None = None
    # the model card's note on the source's terms; ``{name}`` is replaced by the source as the chain named it
    terms_note: str = ""


@dataclass(frozen=True)
class KeyMapSpec:
    """How an upstream checkpoint's keys become timm's: descend into the first of ``unwrap`` the file holds
    (``state_dict``, ``model``, ``teacher``…), take the keys under the first matching ``strip`` prefix ('' = keys
    as they are) without it, and leave out keys starting with any of ``drop`` (projection/prediction heads)."""

    name: str
    unwrap: tuple[str, ...] = ()
    strip: tuple[str, ...] = ("",)
    drop: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class LoggerSpec:
    """An experiment tracker for ``medzoo train --log NAME``. ``create(run_info)`` (a ``medzoo.plugin.RunInfo``)
    is called once per chain before anything trains and returns a ``medzoo.plugin.Logger``; it writes nothing
    and contacts no server (that waits for ``start``), and raises MedzooError when its library is missing (naming
    ``pip install 'medzoo[<extra>]'``), so a missing extra fails before the first epoch, not after it."""

    name: str
    create: Callable[..., Any]
    description: str = ""
    extra: str = ""  # the optional dependency group that installs its library
    plugin: str = ""


@dataclass(frozen=True)
class PreprocessStepSpec:
    """A named preprocessing step of the cache (``PreprocessConfig.steps``, e.g. ``breast_mask``, ``flip_to:left``).

    ``apply(img, mask, arg) -> (img, mask)`` runs on the raw pixels (H×W or H×W×3, uint8/uint16/float in
    [0, 1]) before the resize; it must be deterministic, since its output is cached. ``version``: bump it when
    what ``apply`` produces changes, so caches built by the old code miss. ``check(arg)`` raises MedzooError
    on a bad argument when the config is read; ``choices`` lists a closed set of arguments instead."""

    name: str
    apply: Callable[..., Any]
    description: str = ""
    takes_arg: bool = False
    arg_help: str = ""
    arg_required: bool = True
    choices: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[str | None], Any] | None = None
    version: int = 1
    # the PreprocessConfig field this step replaced, read from old lineages and recipes: true -> the step,
    # a string -> ``name:value``; such fields become steps in the order their steps were registered
    legacy_field: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class ReaderSpec:
    """Reads one image file for ``medzoo predict``. ``read(path, grey=)`` returns pixels as a dataset's
    ``DataSource.read`` does (H×W or H×W×3; uint8, uint16 or float in [0, 1]); ``suffixes`` (lower case, with
    the dot) pick the reader, ``sniff(path) -> bool`` claims files without a suffix (DICOM)."""

    name: str
    read: Callable[..., Any]
    suffixes: tuple[str, ...] = ()
    sniff: Callable[[Any], bool] | None = None
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class Kind:
    key: str
    noun: str
    spec: type[Any]
    hook: str


KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind("archs", "architecture", ArchSpec, "register_archs"),
        Kind("datasets", "dataset", DatasetSpec, "register_datasets"),
        Kind("policies", "freeze policy", FreezePolicySpec, "register_freeze_policies"),
        Kind("sources", "weight source", WeightSourceSpec, "register_weight_sources"),
        Kind("keymaps", "checkpoint key map", KeyMapSpec, "register_key_maps"),
        Kind("loggers", "logger", LoggerSpec, "register_loggers"),
        Kind("steps", "preprocessing step", PreprocessStepSpec, "register_preprocess_steps"),
        Kind("readers", "image reader", ReaderSpec, "register_readers"),
    )
}


@dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: list[str] = field(default_factory=list)  # its entries left out for a name clash, with the winner


@dataclass(frozen=True)
class Ref:
    """A name resolved against the registry: the spec plus the name's argument and options."""

    spec: Any
    arg: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    name: str = ""


def display_name(spec: Any) -> str:
    if not getattr(spec, "takes_arg", False):  # key maps take none
        return spec.name
    arg = f":<{spec.arg_help or 'arg'}>"
    return spec.name + (arg if spec.arg_required else f"[{arg}]")


class Registry:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self.plugins: dict[str, PluginInfo] = {}
        self.clashes: dict[tuple[str, str], list[str]] = {}  # (kept plugin, disabled plugin) -> entries
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)

    # -- building -------------------------------------------------------------------------
    def add(self, kind: str, spec: Any, plugin: str) -> None:
        """Add ``spec``; on a name another plugin has, keep one entry (:meth:`_rank`) and disable the other, so
        one third-party package cannot take every command down (warned once per pair of plugins)."""
        k = KINDS[kind]
        old = self.entries[kind].get(spec.name)
        if old is not None and old.plugin != plugin:
            keep, drop = (old.plugin, plugin) if self._rank(old.plugin) <= self._rank(plugin) else (plugin, old.plugin)
            self.clashes.setdefault((keep, drop), []).append(f"{k.noun} '{spec.name}'")
            info = self.plugins.get(drop)
            if info is not None:
                info.disabled.append(f"{k.noun} '{spec.name}' (taken by '{keep}')")
            if keep == old.plugin:
                return
        self.entries[kind][spec.name] = replace(spec, plugin=plugin)

    def _rank(self, plugin: str) -> tuple[bool, int]:
        """Which of two plugins keeps a clashing name: medzoo's own first, then the one found first on the path
        (entry points are read in ``sys.path`` order, so a package installed later elsewhere comes later)."""
        order = list(self.plugins)
        info = self.plugins.get(plugin)
        return (info is None or info.package != FIRST_PARTY, order.index(plugin) if plugin in order else len(order))

    def _warn_clashes(self) -> None:
        for (keep, drop), names in self.clashes.items():
            _warn(f"plugin {self._who(drop)} registers {', '.join(names)}, already provided by plugin "
                  f"{self._who(keep)}: {self._who(drop)}'s entr{'ies are' if len(names) > 1 else 'y is'} disabled "
                  f"(`medzoo plugins` lists them); rename {'them' if len(names) > 1 else 'it'} in that plugin "
                  "(a prefix like 'acme_'), or load one of the two with MEDZOO_LOAD_PLUGINS")

    def _who(self, plugin: str) -> str:
        info = self.plugins.get(plugin)
        return f"'{plugin}' (package {info.package})" if info else f"'{plugin}'"

    def load_entry_points(self, only: set[str] | None = None) -> None:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if only is not None:
            available = sorted({ep.name for ep in eps})
            for name in sorted(only - set(available)):
                _warn(f"MEDZOO_LOAD_PLUGINS names '{name}', which no installed plugin is"
                      f"{_did_you_mean(name, available)} (plugins: {', '.join(available)})")
        # medzoo's own entry points first, so that a third-party package reusing one of their names is the one
        # skipped (as :meth:`_rank` does for entries); otherwise in sys.path order
        for ep in sorted(eps, key=lambda ep: getattr(getattr(ep, "dist", None), "name", None) != FIRST_PARTY):
            if only is not None and ep.name not in only:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?")
            if ep.name in self.plugins:
                _warn(f"plugin name '{ep.name}' from package {info.package} is already taken by package "
                      f"{self.plugins[ep.name].package}; skipped")
                continue
            self.plugins[ep.name] = info
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not break medzoo
                info.error = f"{type(exc).__name__}: {exc}"
                _warn(f"plugin '{ep.name}' from package {info.package} failed to load and was skipped: {info.error}")

    def call_register_hooks(self) -> None:
        for kind, k in KINDS.items():
            for impl in getattr(self.pm.hook, k.hook).get_hookimpls():
                staged: list[Any] = []
                try:
                    impl.function(register=staged.append)
                    for spec in staged:
                        _validate(k, spec)
                    twice = sorted({s.name for s in staged if [t.name for t in staged].count(s.name) > 1})
                    if twice:
                        raise ValueError(f"registers {k.noun} {', '.join(map(repr, twice))} twice")
                except Exception as exc:
                    self._hook_failed(impl.plugin_name, k.hook, exc)
                    continue
                for spec in staged:
                    self.add(kind, spec, impl.plugin_name)
        self._warn_clashes()
        for name, plugin in self.pm.list_name_plugin():
            if name in self.plugins:
                self.plugins[name].hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])

    def _hook_failed(self, plugin: str, hook: str, exc: Exception) -> None:
        info = self.plugins.get(plugin)
        msg = f"{type(exc).__name__}: {exc}"
        if info is not None:
            info.error = f"{hook}: {msg}"
        _warn(f"plugin {self._who(plugin)} raised in {hook} and was skipped: {msg}")

    def add_commands(self, cli: Any) -> None:
        """Let each plugin add its commands to the click group ``cli``. A command name already taken (a core
        command such as ``train``, or an earlier plugin's, also inside a group such as ``data``) is refused:
        the earlier command is put back and one warning names the plugin."""
        def commands(group: Any, prefix: str = "") -> dict[str, Any]:
            found = {}
            for name, cmd in getattr(group, "commands", {}).items():
                found[prefix + name] = (group, name, cmd)
                found.update(commands(cmd, f"{prefix}{name} "))
            return found

        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = commands(cli)
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self._hook_failed(impl.plugin_name, "register_commands", exc)
            taken = [path for path, (group, name, cmd) in before.items() if group.commands.get(name) is not cmd]
            for path in taken:
                group, name, cmd = before[path]
                group.commands[name] = cmd
            if taken:
                _warn(f"plugin {self._who(impl.plugin_name)} registers the command(s) "
                      f"{', '.join(repr(t) for t in taken)}, which medzoo or an earlier plugin already has: "
                      "skipped, the existing command stays; rename it in that plugin (a prefix like 'acme-')")

    # -- lookup ---------------------------------------------------------------------------
    def list(self, kind: str) -> list[Any]:
        return sorted(self.entries[kind].values(), key=lambda s: s.name)

    def resolve(self, kind: str, name: str) -> Ref:
        """Resolve ``base[:arg]`` (and ``@key=value,...`` options for architectures)."""
        k = KINDS[kind]
        if not isinstance(name, str) or not name.strip():
            raise MedzooError(f"empty {k.noun} name; `medzoo list {kind}` shows the choices")
        base, options = name, {}
        if kind == "archs" and "@" in name:
            base, _, opts = name.partition("@")
            options = _parse_options(opts, name)
        base, sep, arg = base.partition(":")
        spec = self.entries[kind].get(base)
        if spec is None:
            raise MedzooError(f"unknown {k.noun} '{name}'{self._suggest(kind, base)} "
                              f"(`medzoo list {kind}` shows all)")
        takes_arg = getattr(spec, "takes_arg", False)
        if takes_arg and spec.arg_required and not arg:
            raise MedzooError(f"{k.noun} '{base}' needs an argument: write it as '{display_name(spec)}'")
        if sep and not takes_arg:
            raise MedzooError(f"{k.noun} '{base}' takes no ':' argument; write it as '{base}'")
        choices = getattr(spec, "choices", None)
        if arg and choices and arg not in choices:  # a closed list (a catalogue): a typo fails here, not mid-train
            hits = difflib.get_close_matches(arg, list(choices), n=3, cutoff=0.6)
            hint = ("; did you mean " + " or ".join(f"'{base}:{h}'" for h in hits) + "?") if hits else ""
            raise MedzooError(f"unknown {k.noun} '{name}'{hint} (`medzoo list {kind}` shows all)")
        for key in options:
            if key not in getattr(spec, "options", {}):
                allowed = ", ".join(getattr(spec, "options", {})) or "none"
                hint = _did_you_mean(key, list(getattr(spec, "options", {})))
                raise MedzooError(f"{k.noun} '{base}' has no option '{key}'{hint} (its options: {allowed})")
        if arg and getattr(spec, "for_arg", None) is not None:
            spec = replace(spec, **spec.for_arg(arg))
        return Ref(spec=spec, arg=arg or None, options=options, name=name)

    def default_source(self) -> str:
        """The weight source a chain starts from when it names none (the one spec with ``default=True``)."""
        found = [s for s in self.entries["sources"].values() if s.default]
        if len(found) != 1:
            which = ", ".join(f"'{s.name}' (plugin '{s.plugin}')" for s in found) or "none is"
            raise MedzooError(f"exactly one weight source must be the default for chains that name none, and "
                              f"{which}{' are' if found else ''} marked default; name the source first in "
                              "--stages (`medzoo list sources` shows them)")
        return found[0].name

    def _suggest(self, kind: str, base: str) -> str:
        names = [display_name(s) for s in self.entries[kind].values()]
        hit = _did_you_mean(base, names)
        if hit:
            return hit
        # the name may belong to another kind (`medzoo train swin_t --stages swin_t,...`)
        for other, entries in self.entries.items():
            if other != kind and base in entries:
                return f" ('{base}' is a {KINDS[other].noun})"
        return ""


def _validate(k: Kind, spec: Any) -> None:
    if not isinstance(spec, k.spec):
        raise TypeError(f"{k.hook} registered {spec!r}; expected a {k.spec.__name__}")
    if getattr(spec, "task", TASKS[0]) not in TASKS:
        raise ValueError(f"{k.noun} '{spec.name}' has task '{spec.task}', not one of {', '.join(TASKS)}")
    if isinstance(spec, ArchSpec):  # traits the core relies on without further checks
        from .hublayout import HubLayout

        if spec.hub_layout is not None and not isinstance(spec.hub_layout, HubLayout):
            raise TypeError(f"architecture '{spec.name}': hub_layout must be a medzoo.plugin.HubLayout or None")
        groups = spec.group_prefixes
        if not isinstance(groups, tuple) or not all(
                isinstance(g, tuple) and all(isinstance(p, str) for p in g) for g in groups):
            raise TypeError(f"architecture '{spec.name}': group_prefixes must be a tuple of tuples of prefixes, "
                            "e.g. (('encoder.',), ('decoder.',), ('head.',))")


def _did_you_mean(name: str, choices: list[str]) -> str:
    bare = {c.split(":")[0].split("[")[0]: c for c in choices}
    hits = difflib.get_close_matches(name, list(bare), n=3, cutoff=0.6)
    if not hits:
        return ""
    return "; did you mean " + " or ".join(f"'{bare[h]}'" for h in hits) + "?"


def did_you_mean(name: str, choices: list[str]) -> str:
    """'; did you mean 'x'?' for the closest choices, or '' (for plugins that validate arguments)."""
    return _did_you_mean(name, choices)


def _parse_options(text: str, name: str) -> dict[str, str]:
    options = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key or not value:
            raise MedzooError(f"bad option '{part}' in '{name}': write options as NAME@key=value[,key=value]")
        options[key.strip()] = value.strip()
    return options


def _warn(message: str) -> None:
    warnings.warn(message, MedzooPluginWarning, stacklevel=3)


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use from the installed plugins."""
    global _REGISTRY
    if _REGISTRY is None:
        only = os.environ.get("MEDZOO_LOAD_PLUGINS")
        reg = Registry()
        reg.load_entry_points({p.strip() for p in only.split(",") if p.strip()} if only is not None else None)
        reg.call_register_hooks()
        _REGISTRY = reg
    return _REGISTRY


def reset() -> None:
    """Forget the registry so the next lookup re-reads the installed plugins (tests, notebooks)."""
    global _REGISTRY
    _REGISTRY = None
