"""`medzoo data download`: MedMNIST from a local HTTP server (the true npz format), resumed, hash-checked, then
trained on; the datasets behind a licence form print their steps, and `data check` lists what is missing."""

from __future__ import annotations

import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import datagen as g
import pytest
from click.testing import CliRunner
from conftest import run_cli

import medzoo
from medzoo.cli import cli
from medzoo.registry import registry
from medzoo_plugins import medmnist_release

TINY = ["epochs=1", "image_size=32", "batch_size=32"]


class FileServer:
    """Serves a folder on 127.0.0.1 with HTTP Range support (``ignore_range``: a server that answers every
    request with the whole file). Records each GET's Range header and status."""

    def __init__(self, folder, ignore_range=False, cut=None):
        self.folder, self.ignore_range, self.cut, self.requests = folder, ignore_range, cut, []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(server.folder), **kw)

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = server.folder / self.path.lstrip("/").split("?")[0]
                if not path.is_file():
                    server.requests.append((self.headers.get("Range"), 404))
                    return self.send_error(404)
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        server.requests.append((rng, 416))
                        return self.send_error(416)
                status = 206 if start else 200
                server.requests.append((rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.cut:  # the connection drops mid-file (once)
                    self.wfile.write(data[start:server.cut])
                    self.wfile.flush()
                    server.cut = None
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/medmnist"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A mirror holding a generated pneumoniamnist.npz whose md5 is the one the release table expects."""
    npz = g.make_medmnist(tmp_path / "www" / "medmnist", flag="pneumoniamnist")
    monkeypatch.setitem(medmnist_release.MD5["pneumoniamnist"], 28, hashlib.md5(npz.read_bytes()).hexdigest())
    monkeypatch.setenv("MEDZOO_MEDMNIST_URL", "")
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MEDZOO_DATA_MEDMNIST", raising=False)
    servers = []

    def serve(ignore_range=False, cut=None):
        srv = FileServer(tmp_path / "www", ignore_range, cut)
        servers.append(srv)
        monkeypatch.setenv("MEDZOO_MEDMNIST_URL", srv.url)
        return srv

    yield npz, tmp_path / "data" / "medmnist" / "pneumoniamnist.npz", serve
    for srv in servers:
        srv.close()


def _invoke(*args):
    registry().add_commands(cli)
    return CliRunner().invoke(cli, list(args))


def test_download_verifies_installs_atomically_and_a_rerun_does_nothing(mirror):
    npz, dest, serve = mirror
    srv = serve()
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 0, res.output
    assert f"downloaded {srv.url}/pneumoniamnist.npz to {dest}" in res.output
    assert dest.read_bytes() == npz.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["pneumoniamnist.npz"]  # no .part left behind
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 0 and "already present, md5" in res.output and "nothing to do" in res.output
    assert srv.requests == [(None, 200)]  # the second run fetched nothing


def test_a_truncated_download_resumes_from_its_part_file(mirror):
    npz, dest, serve = mirror
    srv = serve()
    data = npz.read_bytes()
    dest.parent.mkdir(parents=True)
    (dest.parent / "pneumoniamnist.npz.part").write_bytes(data[:1000])  # what an interrupted run leaves
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 0, res.output
    assert srv.requests == [("bytes=1000-", 206)]  # only the rest was asked for
    assert dest.read_bytes() == data and not (dest.parent / "pneumoniamnist.npz.part").exists()


def test_a_connection_dropped_mid_file_is_retried_into_a_correct_file(mirror):
    npz, dest, serve = mirror
    srv = serve(cut=900)
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 0, res.output
    # huggingface_hub retries: with a Range from the last chunk it wrote (none of 10 MB here), so from 0
    assert len(srv.requests) == 2 and srv.requests[0] == (None, 200) and srv.requests[1][1] in (200, 206)
    assert dest.read_bytes() == npz.read_bytes()


def test_a_complete_part_file_is_verified_and_installed(mirror):
    npz, dest, serve = mirror
    srv = serve()
    dest.parent.mkdir(parents=True)
    (dest.parent / "pneumoniamnist.npz.part").write_bytes(npz.read_bytes())  # killed before the rename
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 0, res.output
    assert srv.requests == [(f"bytes={npz.stat().st_size}-", 416)]
    assert dest.read_bytes() == npz.read_bytes()


def test_a_second_download_of_the_same_file_is_refused_while_the_first_runs(mirror):
    import fcntl

    npz, dest, serve = mirror
    serve()
    dest.parent.mkdir(parents=True)
    with open(dest.parent / "pneumoniamnist.npz.part", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 1 and "is being written by another download; wait for it to finish" in res.output
    assert not dest.exists()


def test_the_release_table_covers_every_flag_and_size_with_zenodo_urls(monkeypatch):
    from medzoo_plugins.medmnist import FLAGS, SIZES, release_file

    assert set(medmnist_release.MD5) == set(FLAGS)
    assert all(sorted(v) == list(SIZES) and all(len(h) == 32 and int(h, 16) >= 0 for h in v.values())
               for v in medmnist_release.MD5.values())
    monkeypatch.delenv("MEDZOO_MEDMNIST_URL", raising=False)
    assert release_file("chestmnist", 224) == (
        "chestmnist_224.npz", "https://zenodo.org/records/10519652/files/chestmnist_224.npz?download=1",
        "45bd33e6f06c3e8cdb481c74a89152aa")
    assert release_file("breastmnist", None)[:2] == (
        "breastmnist.npz", "https://zenodo.org/records/10519652/files/breastmnist.npz?download=1")
    monkeypatch.setenv("MEDZOO_MEDMNIST_URL", "https://mirror.example/mm/")
    assert release_file("breastmnist", 28)[1] == "https://mirror.example/mm/breastmnist.npz"


def test_a_server_that_ignores_range_restarts_cleanly(mirror):
    npz, dest, serve = mirror
    srv = serve(ignore_range=True)
    dest.parent.mkdir(parents=True)
    (dest.parent / "pneumoniamnist.npz.part").write_bytes(b"x" * 700)  # appended to, this would corrupt the file
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 0, res.output
    assert srv.requests == [("bytes=700-", 200)]
    assert dest.read_bytes() == npz.read_bytes()


def test_a_wrong_hash_is_refused_and_only_medzoos_download_removed(mirror, monkeypatch):
    npz, dest, serve = mirror
    serve()
    good = medmnist_release.MD5["pneumoniamnist"][28]
    monkeypatch.setitem(medmnist_release.MD5["pneumoniamnist"], 28, "0" * 32)
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and f"md5 {good}, expected {'0' * 32}" in lines[-1]
    assert "the download was removed: rerun" in lines[-1] and "Traceback" not in res.output
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []
    # a file the user put there with another hash is refused and left alone
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"my own copy")
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 1 and "exists but its md5 is" in res.output and "move it away" in res.output
    assert dest.read_bytes() == b"my own copy"


def test_a_missing_file_on_the_server_is_one_line_and_no_destination_is_one_line(mirror, monkeypatch):
    npz, dest, serve = mirror
    serve()
    res = _invoke("data", "download", "medmnist:pneumoniamnist_64")
    assert res.exit_code == 1 and "Error: downloading" in res.output and "pneumoniamnist_64.npz" in res.output
    assert "Traceback" not in res.output and list(dest.parent.iterdir()) == []  # no empty .part either
    monkeypatch.delenv("MEDZOO_DATA")
    res = _invoke("data", "download", "medmnist:pneumoniamnist")
    assert res.exit_code == 1 and "Error: nowhere to download 'medmnist' to: set MEDZOO_DATA" in res.output


def test_the_downloaded_dataset_opens_checks_and_trains(mirror):
    npz, dest, serve = mirror
    serve()
    assert _invoke("data", "download", "medmnist:pneumoniamnist").exit_code == 0
    res = _invoke("data", "check", "medmnist:pneumoniamnist")
    assert res.exit_code == 0 and res.output.startswith("medmnist:pneumoniamnist: 20 images"), res.output
    results = medzoo.train("resnet18", "scratch,medmnist:pneumoniamnist", overrides=TINY, precision="fp32")
    assert results[0].dataset == "medmnist:pneumoniamnist"


def test_data_check_lists_what_is_missing(tmp_path):
    g.make_medmnist(tmp_path / "medmnist", flag="breastmnist")
    env = {"MEDZOO_HOME": str(tmp_path / "home"), "MEDZOO_DATA": str(tmp_path)}
    proc = run_cli("data", "check", "medmnist:breastmnist_64", env=env, check=False)
    assert proc.returncode == 1
    npz = tmp_path / "medmnist" / "breastmnist_64.npz"
    assert f"{npz} (`medzoo data download medmnist:breastmnist_64` fetches it)" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "Error: medmnist:breastmnist_64: 1 expected item(s) missing (listed above); "
        "`medzoo data download medmnist:breastmnist_64` shows how to get them"]


# name, generator, what to delete from the generated release (relative to its root), what data check then names
PORTAL = [
    ("inbreast", g.make_inbreast, "INbreast Release 1.0/INbreast.csv", "INbreast.csv or INbreast.xls"),
    ("cbis_ddsm", g.make_cbis, "calc_case_description_test_set.csv", "calc_case_description_test_set.csv"),
    ("bcss", g.make_bcss, "meta/gtruth_codes.tsv", "gtruth_codes.tsv: the class codes"),
    ("chest_xray", g.make_chest_xray, "chest_xray/test", "test/NORMAL/*.jpeg"),
    ("head_ct", g.make_head_ct, "labels.csv", "labels.csv and"),
]


@pytest.mark.parametrize("name,make,remove,named", PORTAL, ids=[p[0] for p in PORTAL])
def test_portal_datasets_print_their_steps_and_check_names_what_is_missing(tmp_path, monkeypatch, name, make, remove,
                                                                          named):
    import shutil

    root = tmp_path / "data" / name
    make(root)
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path / "data"))
    spec = registry().resolve("datasets", name).spec
    assert spec.download is None and spec.manual_steps
    assert spec.missing(root=None, arg=None) == []  # the release's true layout is complete (root from MEDZOO_DATA)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    missing = spec.missing(root=str(root), arg=None)  # as --data-root gives it
    assert len(missing) >= 1 and any(named in m for m in missing), missing
    env = {"MEDZOO_HOME": str(tmp_path / "home"), "MEDZOO_DATA": str(tmp_path / "data")}
    proc = run_cli("data", "check", name, env=env, check=False)
    assert proc.returncode == 1 and named in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: {name}: {len(missing)} expected item(s) missing (listed above); "
        f"`medzoo data download {name}` shows how to get them"]


def test_download_of_a_portal_dataset_prints_the_steps_and_fails(tmp_path):
    env = {"MEDZOO_HOME": str(tmp_path / "home"), "MEDZOO_DATA": str(tmp_path / "data")}
    proc = run_cli("data", "download", "inbreast", "cbis_ddsm_roi:mass", env=env, check=False)
    assert proc.returncode == 1
    assert "inbreast: medzoo cannot download it for you" in proc.stdout
    assert "INbreast Release 1.0/AllDICOMs" in proc.stdout
    assert "https://www.cancerimagingarchive.net/collection/cbis-ddsm/" in proc.stdout
    assert "(docs/datasets/README.md). Then run `medzoo data check cbis_ddsm_roi:mass`" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "Error: inbreast, cbis_ddsm_roi:mass: behind a licence form or portal, not downloadable by medzoo; "
        "follow the steps above"]
    assert not (tmp_path / "data").exists()  # nothing created for a dataset it cannot fetch
    proc = run_cli("data", "download", "phantom_lesion", env=env, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: 'phantom_lesion' has nothing to download: SYNTHETIC")


@pytest.mark.parametrize("member", ["../escaped.npy", "/tmp/abs.npy", "sub/train_images.npy", "notes.txt"])
def test_an_npz_with_a_path_member_is_refused_and_writes_nothing_outside(tmp_path, monkeypatch, member):
    import zipfile

    from medzoo.plugin import MedzooError, open_dataset

    npz = g.make_medmnist(tmp_path / "data" / "medmnist", flag="pneumoniamnist")
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MEDZOO_DATA_MEDMNIST", raising=False)
    with zipfile.ZipFile(npz, "a") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(MedzooError, match=rf"{npz}: refusing its member '{member}'"):
        open_dataset("medmnist:pneumoniamnist")
    assert not (tmp_path / "escaped.npy").exists() and not (tmp_path / "data" / "escaped.npy").exists()
    assert not (tmp_path / "abs.npy").exists() or member != "/tmp/abs.npy"
    proc = run_cli("data", "check", "medmnist:pneumoniamnist", env={"MEDZOO_DATA": str(tmp_path / "data")},
                   check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and f"refusing its member '{member}'" in proc.stderr


def test_data_check_warns_when_a_placed_npz_is_not_the_release_file(tmp_path, monkeypatch):
    npz = g.make_medmnist(tmp_path / "data" / "medmnist", flag="pneumoniamnist")
    env = {"MEDZOO_HOME": str(tmp_path / "home"), "MEDZOO_DATA": str(tmp_path / "data")}
    proc = run_cli("data", "check", "medmnist:pneumoniamnist", env=env)
    published = medmnist_release.MD5["pneumoniamnist"][28]
    got = hashlib.md5(npz.read_bytes()).hexdigest()
    warned = [line for line in proc.stderr.splitlines() if line.startswith("medzoo: warning:")]
    assert len(warned) == 1 and f"{npz}: md5 {got} is not the published {published}" in warned[0], proc.stderr
    assert proc.stdout.startswith("medmnist:pneumoniamnist: 20 images")  # still read, as training reads it
    # the release file itself: no warning (the table made to match, as the mirror fixture does)
    monkeypatch.setitem(medmnist_release.MD5["pneumoniamnist"], 28, got)
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MEDZOO_DATA_MEDMNIST", raising=False)
    res = _invoke("data", "check", "medmnist:pneumoniamnist")
    assert res.exit_code == 0 and "is not the published" not in res.output
