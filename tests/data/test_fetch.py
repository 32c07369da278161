"""`reptile-tf fetch`: sources, verification, atomic writes, the stamp, safe extraction, CLI.

The offline mirror (../shared/data beside the repo) is served over HTTP by a real local server
(ThreadingHTTPServer on 127.0.0.1, port 0). Canonical URLs are pointed at a closed local port
(or at a local server) so that no test touches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from reptile_tf import cli
from reptile_tf.data import fetch as F
from reptile_tf.errors import UserError
from reptile_tf.io import read_json

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OMNI = SHARED / "omniglot"
MINI = SHARED / "miniimagenet"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(dest: Path) -> list[Path]:
    """Temporary / partial files anywhere under dest."""
    return [p for p in dest.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".part"))]


def files_under(dest: Path) -> list[str]:
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())


class _Server:
    def __init__(self, directory: Path, truncate: set[str] = frozenset()):
        requests: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                requests.append(self.path)
                name = self.path.rsplit("/", 1)[-1]
                if name in truncate:  # announce the full length, send half, hang up
                    data = (Path(directory) / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

        self.requests = requests
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(directory: Path, truncate=frozenset()) -> _Server:
        servers.append(_Server(directory, set(truncate)))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def dead_url() -> str:
    """A local URL nobody listens on: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def offline(monkeypatch, dead_url):
    """No environment mirror and no internet: canonical URLs point at a closed local port."""
    assert SHARED.is_dir(), f"offline mirror missing at {SHARED} (CI has ../shared/data beside the repo)"
    monkeypatch.delenv(F.ENV_MIRROR, raising=False)
    dead = {ds: {rel: f"{dead_url}/canonical/{rel}" for rel in urls} for ds, urls in F.CANONICAL_URLS.items()}
    monkeypatch.setattr(F, "CANONICAL_URLS", dead)


def _repack(src: Path, dst: Path) -> None:
    """Same members, other order and timestamps: a different archive sha256, the same tree digest."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in reversed(zin.infolist()):
            new = zipfile.ZipInfo(info.filename, date_time=(2001, 2, 3, 4, 5, 6))
            zout.writestr(new, zin.read(info))


@pytest.fixture(scope="session")
def repacked_omniglot(tmp_path_factory) -> Path:
    """An Omniglot dataset folder whose archives are repacks of the mirror's."""
    root = tmp_path_factory.mktemp("repacked") / "omniglot"
    shutil.copytree(OMNI / "splits", root / "splits")
    for name in ("images_background.zip", "images_evaluation.zip"):
        _repack(OMNI / name, root / name)
    return root


def _omniglot_mirror(root: Path, with_sums: bool = True) -> Path:
    """A writable directory mirror holding copies of the Omniglot files (to be damaged by a test)."""
    shutil.copytree(OMNI, root / "omniglot")
    for p in (root / "omniglot").rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    if with_sums:
        shutil.copy(SHARED / "SHA256SUMS", root / "SHA256SUMS")
    return root


# ----------------------------------------------------------------------------- happy paths


def test_omniglot_over_http_is_verified_and_second_fetch_does_nothing(tmp_path, serve, capsys):
    server = serve(SHARED)
    dest = tmp_path / "raw"
    assert F.fetch("omniglot", dest, mirrors=[server.url], progress=False) == dest
    for rel in F.OMNIGLOT_FILES:
        assert sha256(dest / rel) == sha256(OMNI / rel), rel
    stamp = read_json(dest / F.STAMP_NAME)
    assert set(stamp["files"]) == set(F.OMNIGLOT_FILES)
    # The mirror's SHA256SUMS lists these files, but the project knows them: its own digest decides.
    assert all(e["method"] == "sha256 (project)" for e in stamp["files"].values())
    assert leftovers(dest) == []

    mtimes = {rel: (dest / rel).stat().st_mtime_ns for rel in F.OMNIGLOT_FILES + (F.STAMP_NAME,)}
    before = len(server.requests)
    assert cli.main(["fetch", "omniglot", "--dest", str(dest), "--mirror", server.url]) == 0
    assert "already verified" in capsys.readouterr().out
    assert len(server.requests) == before, "a verified destination must not be fetched again"
    assert {rel: (dest / rel).stat().st_mtime_ns for rel in mtimes} == mtimes


def test_mini_imagenet_over_http_reports_images_per_split(tmp_path, serve):
    server = serve(SHARED)
    dest = F.fetch("mini_imagenet", tmp_path / "mini", mirrors=[server.url], progress=False)
    assert files_under(dest) == sorted(list(F.MINI_FILES) + [F.STAMP_NAME])
    for rel in F.MINI_FILES:
        assert sha256(dest / rel) == sha256(MINI / rel), rel
    images = read_json(dest / F.STAMP_NAME)["images"]
    # README: train/val are subsets (400 / 300 images per class), test is complete.
    assert images == {
        "train": {"images": 25_600, "listed": 38_400, "classes": 64},
        "val": {"images": 4_800, "listed": 9_600, "classes": 16},
        "test": {"images": 12_000, "listed": 12_000, "classes": 20},
    }


def test_tree_digests_match_the_mirror_readme():
    for rel in ("images_background.zip", "images_evaluation.zip"):
        digest, count = F.tree_digest(OMNI / rel)
        assert (digest, count) == (F.KNOWN_ARCHIVES["omniglot", rel].tree_digest, F.KNOWN_ARCHIVES["omniglot", rel].images)
    digest, count = F.tree_digest(MINI / "images-val.zip")
    assert (digest, count) == (F.KNOWN_ARCHIVES["mini_imagenet", "images-val.zip"].tree_digest, 4_800)


def test_canonical_download_is_checked_by_image_count_and_tree_digest(tmp_path, serve, monkeypatch, repacked_omniglot):
    # The canonical archives' bytes differ from the mirror's: simulate with a repack.
    server = serve(repacked_omniglot)
    monkeypatch.setattr(F, "CANONICAL_URLS", {"omniglot": {rel: f"{server.url}/{rel}" for rel in F.OMNIGLOT_FILES},
                                              "mini_imagenet": {}})
    dest = F.fetch("omniglot", tmp_path / "raw", mirrors=[str(tmp_path / "no-such-mirror")], progress=False)
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files["images_background.zip"]["method"] == "tree digest (project)"
    assert files["images_background.zip"]["images"] == 19_280
    assert files["splits/vinyals/val.txt"]["method"] == "sha256 (project)"
    assert sha256(dest / "images_background.zip") == sha256(repacked_omniglot / "images_background.zip")


# ----------------------------------------------------------------------------- source order, env


def test_source_comes_before_mirrors_and_mirror_order_is_kept(tmp_path, serve, repacked_omniglot):
    server = serve(SHARED)
    dest = F.fetch("omniglot", tmp_path / "a", mirrors=[server.url], source=str(repacked_omniglot), progress=False)
    assert sha256(dest / "images_background.zip") == sha256(repacked_omniglot / "images_background.zip")
    assert sha256(dest / "images_background.zip") != sha256(OMNI / "images_background.zip")
    assert server.requests == [] or all(r.endswith("SHA256SUMS") for r in server.requests)

    # A --source lacking a file falls through to the mirrors, in the order given.
    partial = tmp_path / "partial"
    (partial / "splits").mkdir(parents=True)
    shutil.copytree(OMNI / "splits" / "vinyals", partial / "splits" / "vinyals")
    dest = F.fetch("omniglot", tmp_path / "b", mirrors=[str(tmp_path / "missing"), server.url, str(SHARED)],
                   source=str(partial), progress=False)
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files["splits/vinyals/train.txt"]["source"] == str(partial / "splits/vinyals/train.txt")
    assert files["images_background.zip"]["source"] == f"{server.url}/omniglot/images_background.zip"


def test_env_mirror_is_honoured_by_cli(tmp_path, monkeypatch):
    monkeypatch.setenv(F.ENV_MIRROR, f"{tmp_path / 'missing'}   {SHARED}")
    assert F.mirrors_from_env() == [str(tmp_path / "missing"), str(SHARED)]
    dest = tmp_path / "raw"
    assert cli.main(["fetch", "omniglot", "--dest", str(dest), "--no-progress"]) == 0
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files["images_evaluation.zip"]["source"] == str(OMNI / "images_evaluation.zip")


def test_env_mirrors_follow_the_given_mirrors_in_the_python_api(tmp_path, monkeypatch, serve):
    server = serve(SHARED)
    monkeypatch.setenv(F.ENV_MIRROR, str(SHARED))
    dest = F.fetch("omniglot", tmp_path / "raw", mirrors=[server.url], progress=False)
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files["images_background.zip"]["source"] == f"{server.url}/omniglot/images_background.zip"
    dest = F.fetch("omniglot", tmp_path / "raw2", progress=False)
    assert read_json(dest / F.STAMP_NAME)["files"]["images_background.zip"]["source"] == str(OMNI / "images_background.zip")


def test_source_may_be_a_url(tmp_path, serve):
    server = serve(SHARED)
    dest = F.fetch("omniglot", tmp_path / "raw", source=f"{server.url}/omniglot", progress=False)
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files["images_evaluation.zip"]["source"] == f"{server.url}/omniglot/images_evaluation.zip"
    assert files["images_evaluation.zip"]["method"] == "sha256 (project)"


def test_fetch_module_does_not_import_tensorflow():
    code = "import sys, reptile_tf.cli, reptile_tf.data.fetch; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_mirrors_from_env_parsing():
    assert F.mirrors_from_env({}) == []
    assert F.mirrors_from_env({F.ENV_MIRROR: " /a  http://b/c "}) == ["/a", "http://b/c"]


# ----------------------------------------------------------------------------- rejections


def test_corrupted_archive_is_rejected_naming_file_and_expected_digest(tmp_path):
    mirror = _omniglot_mirror(tmp_path / "mirror")
    archive = mirror / "omniglot" / "images_background.zip"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[str(mirror)], progress=False)
    message = str(err.value)
    assert "images_background.zip" in message
    assert F.KNOWN_SHA256["omniglot", "images_background.zip"] in message  # the expected value
    assert "REJECTED" in message and "canonical" in message
    assert not (dest / "images_background.zip").exists()
    assert not (dest / F.STAMP_NAME).exists()
    assert leftovers(dest) == []


def test_truncated_archive_without_sums_is_rejected_by_content(tmp_path):
    mirror = _omniglot_mirror(tmp_path / "mirror", with_sums=False)
    archive = mirror / "omniglot" / "images_evaluation.zip"
    archive.write_bytes(archive.read_bytes()[:1_000_000])
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[str(mirror)], progress=False)
    message = str(err.value)
    assert "images_evaluation.zip is not a readable zip archive" in message
    assert F.KNOWN_ARCHIVES["omniglot", "images_evaluation.zip"].tree_digest in message
    assert "13,180 images" in message
    assert not (dest / "images_evaluation.zip").exists()
    assert (dest / "images_background.zip").is_file()  # verified files stay; they are complete
    assert leftovers(dest) == []


def test_truncated_http_transfer_leaves_no_partial_file(tmp_path, serve):
    server = serve(SHARED, truncate={"images_background.zip"})
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[server.url], progress=False)
    assert "images_background.zip" in str(err.value)
    assert "transfer" in str(err.value)
    assert not (dest / "images_background.zip").exists()
    assert leftovers(dest) == []


def test_wrong_archive_without_sums_is_rejected(tmp_path):
    mirror = _omniglot_mirror(tmp_path / "mirror", with_sums=False)
    shutil.copy(OMNI / "images_evaluation.zip", mirror / "omniglot" / "images_background.zip")
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", tmp_path / "raw", mirrors=[str(mirror)], progress=False)
    message = str(err.value)
    assert "images_background.zip: 13,180 files with tree digest" in message
    assert F.KNOWN_ARCHIVES["omniglot", "images_background.zip"].tree_digest in message


def _zip_with(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images_background/ok/fine.png", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, data)
    return path


MALICIOUS = [
    ("absolute", "/tmp/reptile_tf_evil.png", False, "absolute path"),
    ("dotdot", "images_background/../../evil.png", False, "'..'"),
    ("symlink", "images_background/link", True, "symbolic link"),
]


@pytest.mark.parametrize("kind,name,symlink,reason", MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_fetch_refuses_malicious_archive(tmp_path, kind, name, symlink, reason):
    source = tmp_path / "src"
    shutil.copytree(OMNI / "splits", source / "splits")
    _zip_with(source / "images_background.zip", name, b"evil", symlink)
    dest = tmp_path / "raw"
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, source=str(source), progress=False)
    message = str(err.value)
    assert "images_background.zip is unsafe" in message and reason in message
    assert not (dest / "images_background.zip").exists() and leftovers(dest) == []


def test_no_reachable_source_lists_every_source_tried(tmp_path, dead_url):
    dest = tmp_path / "raw"
    missing = str(tmp_path / "no-mirror")
    with pytest.raises(UserError) as err:
        F.fetch("omniglot", dest, mirrors=[missing, f"{dead_url}/m"], source=str(tmp_path / "no-source"),
                progress=False)
    message = str(err.value)
    for expected in (str(tmp_path / "no-source"), missing, f"{dead_url}/m/omniglot", "canonical", "unreachable",
                     "--mirror", F.ENV_MIRROR):
        assert expected in message, expected
    assert not dest.exists(), "a failed fetch into a new directory leaves nothing behind"


def test_mini_imagenet_without_any_source_says_how_to_supply_it(tmp_path):
    with pytest.raises(UserError, match="no public download"):
        F.fetch("mini_imagenet", tmp_path / "mini", progress=False)


def test_unknown_dataset_and_bad_dest(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        F.fetch("cifar", tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        F.fetch("omniglot", tmp_path / "file")


# ----------------------------------------------------------------------------- stamp and resume


def test_changed_file_is_noticed_and_replaced(tmp_path):
    dest = F.fetch("omniglot", tmp_path / "raw", mirrors=[str(SHARED)], progress=False)
    with open(dest / "splits/vinyals/val.txt", "a") as f:
        f.write("Bogus/character01/rot000\n")
    assert not F.stamp_is_current(dest, "omniglot")
    untouched = (dest / "images_background.zip").stat().st_mtime_ns
    F.fetch("omniglot", dest, mirrors=[str(SHARED)], progress=False)
    assert sha256(dest / "splits/vinyals/val.txt") == F.KNOWN_SHA256["omniglot", "splits/vinyals/val.txt"]
    assert (dest / "images_background.zip").stat().st_mtime_ns == untouched
    assert F.stamp_is_current(dest, "omniglot")


def test_verified_file_already_in_dest_is_kept(tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    shutil.copy2(OMNI / "images_background.zip", dest / "images_background.zip")
    mtime = (dest / "images_background.zip").stat().st_mtime_ns
    F.fetch("omniglot", dest, mirrors=[str(SHARED)], progress=False)
    files = read_json(dest / F.STAMP_NAME)["files"]
    assert files["images_background.zip"]["source"] == "already in DEST"
    assert (dest / "images_background.zip").stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- user Mini-ImageNet copies


@pytest.fixture(scope="session")
def mini_user_images(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Per split: the first 2 mirror images of every class (name -> jpg bytes)."""
    picked: dict[str, dict[str, bytes]] = {}
    for split in F.RAVI_SPLITS:
        labels = F.read_ravi_csv(MINI / f"splits/ravi/{split}.csv")
        per_class: dict[str, int] = {}
        picked[split] = {}
        with zipfile.ZipFile(MINI / f"images-{split}.zip") as z:
            for info in z.infolist():
                name = info.filename.split("/")[-1]
                label = labels[name]
                if per_class.get(label, 0) < 2:
                    per_class[label] = per_class.get(label, 0) + 1
                    picked[split][name] = z.read(info)
    return picked


def _user_copy(root: Path) -> Path:
    shutil.copytree(MINI / "splits", root / "splits")
    return root


def test_mini_imagenet_from_user_images_folder(tmp_path, mini_user_images):
    source = _user_copy(tmp_path / "mine")
    (source / "images").mkdir()
    for split_images in mini_user_images.values():
        for name, data in split_images.items():
            (source / "images" / name).write_bytes(data)
    (source / "images" / "unrelated.jpg").write_bytes(b"\xff\xd8\xffnot listed")
    dest = F.fetch("mini_imagenet", tmp_path / "mini", source=str(source), progress=False)
    stamp = read_json(dest / F.STAMP_NAME)
    assert stamp["images"] == {
        "train": {"images": 128, "listed": 38_400, "classes": 64},
        "val": {"images": 32, "listed": 9_600, "classes": 16},
        "test": {"images": 40, "listed": 12_000, "classes": 20},
    }
    assert len(list((dest / "images").iterdir())) == 200
    assert not any(dest.glob("images-*.zip"))
    mtime = (dest / "images").stat().st_mtime_ns
    F.fetch("mini_imagenet", dest, source=str(source), progress=False)
    assert (dest / "images").stat().st_mtime_ns == mtime
    (dest / "images" / next(iter(mini_user_images["val"]))).unlink()
    assert not F.stamp_is_current(dest, "mini_imagenet")


def test_mini_imagenet_user_folder_missing_a_class_is_rejected(tmp_path, mini_user_images):
    source = _user_copy(tmp_path / "mine")
    (source / "images").mkdir()
    for split, split_images in mini_user_images.items():
        for name, data in split_images.items():
            if not (split == "test" and name.startswith("n01930112")):
                (source / "images" / name).write_bytes(data)
    dest = tmp_path / "mini"
    with pytest.raises(UserError, match="test split has images for 19 of 20 classes"):
        F.fetch("mini_imagenet", dest, source=str(source), progress=False)
    assert not (dest / "images").exists() and leftovers(dest) == []


def _write_zip(path: Path, images: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in images.items():
            z.writestr(f"images/{name}", data)


def test_mini_imagenet_user_archives_checked_against_the_csvs(tmp_path, mini_user_images):
    source = _user_copy(tmp_path / "mine")
    for split in F.RAVI_SPLITS:
        _write_zip(source / f"images-{split}.zip", mini_user_images[split])
    dest = F.fetch("mini_imagenet", tmp_path / "ok", source=str(source), progress=False)
    stamp = read_json(dest / F.STAMP_NAME)
    assert stamp["files"]["images-val.zip"]["method"] == "Ravi CSV membership (user copy)"
    assert stamp["images"]["val"] == {"images": 32, "listed": 9_600, "classes": 16}

    # Wrong files: validation images mixed with test images; validation images missing a class.
    mixed = {**mini_user_images["val"], **mini_user_images["test"]}
    one_class_short = {n: d for n, d in mini_user_images["val"].items() if not n.startswith("n01855672")}
    for images, expected in [(mixed, "32 images listed in splits/ravi/val.csv covering 16 of 16 classes, 40 images "
                                     "not listed"),
                             (one_class_short, "30 images listed in splits/ravi/val.csv covering 15 of 16 classes, "
                                               "0 images not listed")]:
        _write_zip(source / "images-val.zip", images)
        dest = tmp_path / "bad"
        with pytest.raises(UserError) as err:
            F.fetch("mini_imagenet", dest, source=str(source), progress=False)
        assert f"images-val.zip: {expected}" in str(err.value)
        assert "another split" in str(err.value)
        assert not (dest / "images-val.zip").exists() and leftovers(dest) == []


# ----------------------------------------------------------------------------- CLI


def test_cli_exit_codes(tmp_path, capsys):
    assert cli.main(["fetch", "omniglot", "--dest", str(tmp_path / "ok"), "--mirror", str(SHARED), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "omniglot: verified" in out and "images_background.zip" in out
    assert cli.main(["fetch", "omniglot", "--dest", str(tmp_path / "bad"), "--mirror", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "reptile-tf fetch: error: could not obtain a verified omniglot file" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fetch", "cifar", "--dest", str(tmp_path)])
    assert exit_info.value.code == 2
