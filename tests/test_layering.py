"""The plugin API is the only door: first-party plugins import nothing of medzoo but ``medzoo.plugin``."""

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def medzoo_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "medzoo"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "medzoo":
            found.append(node.module)
    return found


def test_first_party_plugins_import_only_the_plugin_api():
    offenders = {p.name: mods for p in sorted(PLUGINS.glob("*.py"))
                 if (mods := [m for m in medzoo_imports(p) if m != "medzoo.plugin"])}
    assert list(PLUGINS.glob("*.py")), "no plugin modules found"
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
