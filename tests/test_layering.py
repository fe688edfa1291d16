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
