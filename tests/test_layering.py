"""The plugin API is the only door: first-party plugins import nothing of medzoo but ``medzoo.plugin``."""

import ast
import io
import re
import tokenize
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
EXAMPLE = PLUGINS.parent / "docs" / "example_plugin"  # the worked example of docs/plugins.md: what authors copy


def medzoo_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "medzoo"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "medzoo":
            found.append(node.module)
    return found


def test_first_party_plugins_import_only_the_plugin_api():
    files = sorted(PLUGINS.glob("*.py")) + sorted(EXAMPLE.rglob("*.py"))
    offenders = {str(p.relative_to(PLUGINS.parent)): mods for p in files
                 if (mods := [m for m in medzoo_imports(p) if m != "medzoo.plugin"])}
    assert list(PLUGINS.glob("*.py")) and list(EXAMPLE.rglob("*.py")), "no plugin modules found"
    assert offenders == {}, f"plugins reaching past medzoo.plugin: {offenders}"


def test_the_check_catches_an_internal_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import medzoo.store\nfrom medzoo.data import Record\nfrom medzoo.plugin import hookimpl\n")
    assert medzoo_imports(bad) == ["medzoo.store", "medzoo.data", "medzoo.plugin"]


def import_cycles(package: str) -> list[tuple[str, str]]:
    """Each import ``a -> b`` inside ``package`` from which ``a`` is reachable again: an import circle. Lazy
    imports inside functions count (they still tangle the modules); ``if TYPE_CHECKING:`` ones never run."""
    import grimp

    graph = grimp.build_graph(package, include_external_packages=False, exclude_type_checking_imports=True)
    return sorted((a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                  if graph.chain_exists(importer=b, imported=a))


def test_medzoo_has_no_import_circles():
    # the same rule as the acyclic_siblings contract `make lint` runs, kept here so pytest alone enforces it
    assert import_cycles("medzoo") == []


def test_the_circle_check_catches_a_lazy_circle(tmp_path, monkeypatch):
    pkg = tmp_path / "circ_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("from . import b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circ_pkg") == [("circ_pkg.a", "circ_pkg.b"), ("circ_pkg.b", "circ_pkg.a")]


# -- the core names no architecture, library or dataset: their plugins fill in the specs' traits instead ---------
# Except timm, the core's base library for classification models (a declared core dependency, not a plugin's):
# store's config.json is timm's Hub format and zoo's features_only path calls timm.create_model, so 'timm' is
# not among NAMES. Every other library, each dataset and each weight source belongs to a plugin.

CORE = PLUGINS.parent / "medzoo"
NAMES = ("swin", "vit", "deit", "beit", "unetr", "unet_", "resnet", "convnext", "efficientnet", "densenet", "mobilenet",
         "inception", "smp", "segmentation_models", "monai", "inbreast", "cbis", "bcss", "medmnist", "medagg",
         "mammo", "chexpert", "busi", "isic",
         # the shipped datasets and weight sources (`medzoo list datasets` / `list sources`) by name
         "imagenet", "phantom", "head_ct", "chest_xray", "inat2021", "moco", "simclr", "swav", "byol", "barlow")
# a name starts a word ('sensitivity' holds no ViT); 'smp' is a whole word
NAME_RE = re.compile(r"(?<![a-z])(?:" + "|".join(re.escape(n) for n in NAMES if n != "smp") + r"|smp(?![a-z]))",
                     re.IGNORECASE)
# (file, name): the core's one segmentation loss is MONAI's masked Dice (a task's loss, not an architecture's);
# moving it behind a plugin trait is left to a later change (see docs/zoo.md "Architecture traits")
ALLOWED = {("metrics.py", "monai")}
# (file, name, text of the line): one line only; the cards' method citation of CheXtransfer names ImageNet in its
# paper title, which is not the weight source
ALLOWED_LINES = {("cards.py", "imagenet", "Efficiency of ImageNet Models for Chest X-Ray")}


def allowed(path: Path, line: int, name: str) -> bool:
    text = path.read_text().splitlines()[line - 1]
    return (path.name, name) in ALLOWED or any((f, n) == (path.name, name) and t in text for f, n, t in ALLOWED_LINES)


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def named_in_code(path: Path) -> list[tuple[int, str]]:
    """(line, name) for each architecture/library/dataset name in ``path`` outside comments and docstrings."""
    source = path.read_text()
    skip = _docstring_lines(ast.parse(source, str(path)))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE) or tok.start[0] in skip:
            continue
        found += [(tok.start[0], m.group(0).lower()) for m in NAME_RE.finditer(tok.string)]
    return found


def test_the_core_names_no_architecture_library_or_dataset():
    offenders = [f"medzoo/{p.name}:{line}: {name}" for p in sorted(CORE.glob("*.py"))
                 for line, name in named_in_code(p) if not allowed(p, line, name)]
    assert list(CORE.glob("*.py")), "no core modules found"
    assert offenders == [], "the core names what only a plugin should know:\n" + "\n".join(offenders)


def test_the_name_check_sees_code_and_strings_not_docstrings_or_comments(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Swin and INbreast in a docstring."""\n'
                     'def f(name):\n'
                     '    """resnet here too."""\n'
                     '    x = 1  # a comment about smp\n'
                     '    if name.startswith(("swin", "vit")):\n'
                     '        return f"unet_{name}"\n'
                     '    return "sensitivity of medagg"\n'
                     'import segmentation_models_pytorch as smp\n')
    assert named_in_code(probe) == [(5, "swin"), (5, "vit"), (6, "unet_"), (7, "medagg"),
                                    (8, "segmentation_models"), (8, "smp")]
