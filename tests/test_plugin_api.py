"""What a plugin author meets: labels checked where the data is opened, errors pointing at the plugin's docs."""

import numpy as np
import pytest
from click.testing import CliRunner

from medzoo.plugin import ArraySource, DatasetSpec, MedzooError, Record, data_root, registry


def _source(labels, task="classification", classes=("benign", "malignant")):
    records = [Record(f"img{i}", label, "train" if i < 4 else "val", patient=f"p{i}") for i, label in enumerate(labels)]
    return ArraySource("acme_scans", task, classes, records, np.zeros((len(labels), 8, 8), np.uint8))


def _register(source, **spec):
    registry().add("datasets", DatasetSpec(name="acme_scans", open=lambda **kw: source, task=source.task, **spec),
                   "acme")


@pytest.mark.parametrize("labels, problem", [
    (["benign", "malignant", "benign", "malignant", "benign"], "record 'img0' has label 'benign', not a class index"),
    ([0, 1, 0, 2, 1], "record 'img3' has label 2, outside 0..1 for its 2 classes"),
])
def test_a_label_that_is_not_a_class_index_names_the_record_and_the_fix(labels, problem):
    from medzoo.plugin import open_dataset

    _register(_source(labels))
    with pytest.raises(MedzooError) as err:
        open_dataset("acme_scans", trainable=True)
    assert problem in str(err.value) and "Record(label=classes.index(name))" in str(err.value)
    assert "'benign', 'malignant'" in str(err.value)


def test_numpy_integer_labels_and_multilabel_rows_are_accepted():
    from medzoo.plugin import open_dataset

    _register(_source([np.int64(i % 2) for i in range(5)]))
    assert len(open_dataset("acme_scans").records) == 5
    registry().entries["datasets"].pop("acme_scans")
    _register(_source([[0, 1], [1, 1], [0, 0], [1, 0], [2, 0]], task="multilabel"))
    with pytest.raises(MedzooError, match="record 'img4' has label \\[2, 0\\]; a multilabel record's label is one 0/1"):
        open_dataset("acme_scans")


def test_data_check_of_a_string_labelled_plugin_dataset_is_one_error_line():
    """`medzoo data check` (plugins/generic.py) used to die in a TypeError traceback on a string label."""
    from medzoo.cli import cli

    _register(_source(["benign", "malignant", "benign", "malignant", "benign"]))
    if "check" not in cli.commands["data"].commands:  # the group is core's; plugins add its commands
        registry().add_commands(cli)
    res = CliRunner().invoke(cli, ["data", "check", "acme_scans"])
    assert res.exit_code == 1 and res.exception.__class__ is SystemExit
    assert res.output.startswith("Error: dataset 'acme_scans': record 'img0' has label 'benign'")
    assert "Traceback" not in res.output


def test_no_data_for_a_plugin_dataset_links_to_its_own_docs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path))
    _register(_source([0, 1, 0, 1, 0]), docs="https://acme.example/datasets/scans")
    with pytest.raises(MedzooError) as err:
        data_root("acme_scans")
    assert str(err.value).endswith("how to get it: https://acme.example/datasets/scans")
    assert "github.com/medzoo" not in str(err.value)


def test_no_data_for_a_plugin_dataset_without_docs_names_the_plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path))
    _register(_source([0, 1, 0, 1, 0]))
    with pytest.raises(MedzooError, match="how to get it: the documentation of plugin 'acme'") as err:
        data_root("acme_scans")
    assert "github.com/medzoo" not in str(err.value)


def test_no_data_for_a_first_party_dataset_still_links_to_medzoos_page(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path))
    with pytest.raises(MedzooError, match="how to get it: https://github.com/medzoo/medzoo/blob/main/docs/datasets/"
                                          "chest_xray.md"):
        data_root("chest_xray")


def test_every_public_name_is_documented_and_plugins_use_only_public_names():
    import ast
    from pathlib import Path

    import medzoo.plugin as api

    public = set(api.__all__)
    assert len(public) == len(api.__all__) and not [n for n in public if n.startswith("_")]
    assert [n for n in api.__all__ if not hasattr(api, n)] == []
    assert [n for n in api.__all__ if f"``{n}" not in api.__doc__] == []
    used = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "medzoo.plugin":
                used.update({a.name: path.name for a in node.names})
    assert {n: f for n, f in used.items() if n not in public} == {}


def test_a_weight_source_gets_a_ref():
    from medzoo.plugin import Ref

    ref = registry().resolve("archs", "resnet50@truncate=1")
    assert isinstance(ref, Ref) and (ref.spec.name, ref.arg, dict(ref.options), ref.name) == (
        "resnet50", None, {"truncate": "1"}, "resnet50@truncate=1")
