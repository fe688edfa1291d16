"""The hooks a medzoo plugin can implement (entry-point group ``medzoo``)."""

import pluggy

hookspec = pluggy.HookspecMarker("medzoo")
hookimpl = pluggy.HookimplMarker("medzoo")


@hookspec
def register_archs(register):
    """Register architectures: call ``register(ArchSpec(...))`` for each."""


@hookspec
def register_datasets(register):
    """Register datasets: call ``register(DatasetSpec(...))`` for each."""


@hookspec
def register_freeze_policies(register):
    """Register freeze policies: call ``register(FreezePolicySpec(...))`` for each."""


@hookspec
def register_weight_sources(register):
    """Register weight sources (the first element of ``--stages``): call ``register(WeightSourceSpec(...))``."""


@hookspec
def register_key_maps(register):
    """Register how a method's published checkpoint maps onto timm names: call ``register(KeyMapSpec(...))``.
    ``medzoo weights convert`` and the ``url:``/catalogue sources use them, so a new upstream method is a plugin."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``medzoo`` command line group ``cli``."""


@hookspec
def register_loggers(register):
    """Register experiment trackers for ``train --log``: call ``register(LoggerSpec(...))`` for each."""


@hookspec
def register_preprocess_steps(register):
    """Register named preprocessing steps for ``PreprocessConfig.steps``: call ``register(PreprocessStepSpec(...))``."""


@hookspec
def register_readers(register):
    """Register image file readers for ``medzoo predict``: call ``register(ReaderSpec(...))``."""
