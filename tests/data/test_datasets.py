"""TFDS builders and `reptile-tf prepare`: counts, split protocols, image pipeline, idempotence, errors.

Real data comes from the session fixtures in tests/conftest.py (built once, cached in
.cache/tests). Small synthetic raw directories cover what the mirror cannot show
(missing images, non-standard image sizes, missing split files).
"""

from __future__ import annotations

import csv
import io
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reptile_tf import cli
from reptile_tf.data import episodes as E
from reptile_tf.data import prepare as P
from reptile_tf.errors import UserError


# --------------------------------------------------------------------------- real Omniglot

def test_omniglot_has_all_1623_characters_with_20_drawings(omniglot_data_dir):
    builder = P.get_builder("omniglot", omniglot_data_dir)
    assert builder.info.splits["background"].num_examples == 19_280
    assert builder.info.splits["evaluation"].num_examples == 13_180
    base, characters, _ = E.omniglot_base(omniglot_data_dir)
    assert base.shape == (1623, 20, 28, 28, 1) and base.dtype == np.uint8
    assert len(set(characters)) == 1623 and characters == sorted(characters, key=lambda c: tuple(c.split("/")))
    assert len({c.split("/")[0] for c in characters}) == 50


def test_omniglot_character_order_matches_the_archives(omniglot_data_dir, omniglot_raw_dir):
    names = set()
    for archive in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot_raw_dir / f"{archive}.zip") as zf:
            names |= {"/".join(m.split("/")[1:3]) for m in zf.namelist() if m.endswith(".png")}
    _, characters, _ = E.omniglot_base(omniglot_data_dir)
    # the official code walks sorted(os.listdir()) of the alphabets, then of each alphabet's characters
    expected = [f"{a}/{c}" for a in sorted({n.split("/")[0] for n in names})
                for c in sorted(n.split("/")[1] for n in names if n.split("/")[0] == a)]
    assert characters == expected


def test_omniglot_images_keep_polarity_and_match_the_documented_resize(omniglot_data_dir, omniglot_raw_dir):
    base, characters, _ = E.omniglot_base(omniglot_data_dir)
    # background bright, strokes dark
    assert np.median(base) == 255 and base.min() < 40
    # the first drawing (sorted by file name) of the first character, resized as documented
    with zipfile.ZipFile(omniglot_raw_dir / "images_background.zip") as zf:
        members = sorted(m for m in zf.namelist() if m.startswith(f"images_background/{characters[0]}/")
                         and m.endswith(".png"))
        raw = Image.open(io.BytesIO(zf.read(members[0])))
        expected = np.asarray(raw.convert("L").resize((28, 28), resample=Image.LANCZOS))
    np.testing.assert_array_equal(base[0, 0, :, :, 0], expected)


def test_reptile_protocol_4800_train_and_423_test_classes(omniglot_train_images, omniglot_test_images):
    assert tuple(omniglot_train_images.shape) == (4800, 20, 28, 28, 1)
    assert tuple(omniglot_test_images.shape) == (423, 20, 28, 28, 1)


def test_reptile_protocol_follows_the_official_shuffle_and_rotations(omniglot_data_dir, omniglot_train_images,
                                                                   omniglot_test_images):
    base, characters, _ = E.omniglot_base(omniglot_data_dir)
    # the official code: random.seed(0); random.shuffle(list of characters in sorted order)
    random.seed(0)
    shuffled = list(characters)
    random.shuffle(shuffled)
    first_train, first_test = characters.index(shuffled[0]), characters.index(shuffled[1200])
    train = omniglot_train_images.numpy()
    np.testing.assert_array_equal(train[0], base[first_train])
    np.testing.assert_array_equal(omniglot_test_images.numpy()[0], base[first_test])
    # classes 0..3 are the same character rotated 0/90/180/270 degrees counter-clockwise, as PIL rotates
    for k, degrees in enumerate((0, 90, 180, 270)):
        pil = np.asarray(Image.fromarray(base[first_train, 3, :, :, 0]).rotate(degrees))
        np.testing.assert_array_equal(train[k, 3, :, :, 0], pil)
    train_chars, test_chars = E.reptile_characters(1623)
    assert len(train_chars) == 1200 and len(test_chars) == 423
    assert sorted(train_chars + test_chars) == list(range(1623))


@pytest.mark.parametrize("split,characters", [("train", 1028), ("val", 172), ("test", 423), ("trainval", 1200)])
def test_vinyals_split_sizes(omniglot_data_dir, split, characters):
    images = E.load_split_array("omniglot", split, omniglot_data_dir, protocol="vinyals")
    assert images.shape == (characters * 4, 20, 28, 28, 1)


def test_vinyals_classes_follow_the_split_file(omniglot_data_dir, omniglot_raw_dir):
    base, characters, _ = E.omniglot_base(omniglot_data_dir)
    lines = (omniglot_raw_dir / "splits" / "vinyals" / "val.txt").read_text().split()
    val = E.load_split_array("omniglot", "val", omniglot_data_dir, protocol="vinyals")
    for i in (0, 1, 2, 3, 301):
        name, rot = lines[i].rsplit("/", 1)
        expected = np.rot90(base[characters.index(name)], k=int(rot[3:]) // 90, axes=(1, 2))
        np.testing.assert_array_equal(val[i], expected)


# --------------------------------------------------------------------------- real Mini-ImageNet

@pytest.mark.parametrize("split,classes,per_class", [("train", 64, 400), ("val", 16, 300), ("test", 20, 600)])
def test_mini_imagenet_splits_hold_the_images_present(mini_imagenet_data_dir, split, classes, per_class):
    builder = P.get_builder("mini_imagenet", mini_imagenet_data_dir)
    assert builder.info.splits[split].num_examples == classes * per_class
    counts = P.found_counts("mini_imagenet", mini_imagenet_data_dir)
    assert list(counts["images_found"][split].values()) == [per_class] * classes
    assert list(counts["images_listed"][split].values()) == [600] * classes


@pytest.mark.parametrize("split,classes,per_class", [("val", 16, 300), ("test", 20, 600)])
def test_mini_imagenet_load_split_shapes(mini_imagenet_data_dir, split, classes, per_class):
    # (train, 64 x 400, takes the same code path; decoding its 25,600 JPEGs is left to training runs)
    images = E.load_split(split=split, dataset="mini_imagenet", data_dir=mini_imagenet_data_dir)
    assert tuple(images.shape) == (classes, per_class, 84, 84, 3) and images.dtype.name == "uint8"


def test_mini_imagenet_images_are_the_archive_jpegs(mini_imagenet_data_dir, mini_imagenet_raw_dir):
    import tensorflow as tf

    with open(mini_imagenet_raw_dir / "splits" / "ravi" / "test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    second_class = sorted(r["filename"] for r in rows if r["label"] == labels[1])
    with zipfile.ZipFile(mini_imagenet_raw_dir / "images-test.zip") as zf:
        expected = tf.io.decode_jpeg(zf.read(f"images/{second_class[5]}"), channels=3).numpy()
    test = E.load_split_array("mini_imagenet", "test", mini_imagenet_data_dir)
    np.testing.assert_array_equal(test[1, 5], expected)


# --------------------------------------------------------------------------- prepare

def test_prepare_twice_does_nothing(omniglot_data_dir, omniglot_raw_dir, monkeypatch):
    info = Path(P.get_builder("omniglot", omniglot_data_dir).data_dir) / "dataset_info.json"
    before = info.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("download_and_prepare called on a prepared dataset")

    monkeypatch.setattr(P.builder_class("omniglot"), "download_and_prepare", fail)
    P.prepare("omniglot", omniglot_raw_dir, omniglot_data_dir)
    assert info.stat().st_mtime_ns == before


def test_prepare_cli_reports_counts(mini_imagenet_data_dir, mini_imagenet_raw_dir, capsys):
    code = cli.main(["prepare", "mini_imagenet", "--raw", str(mini_imagenet_raw_dir),
                     "--data-dir", str(mini_imagenet_data_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert '"images_found": 25600' in out and '"images_listed": 38400' in out


def test_prepare_rejects_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        P.prepare("cifar", tmp_path, tmp_path / "tfds")


@pytest.mark.parametrize("dataset", ["omniglot", "mini_imagenet"])
def test_prepare_names_missing_raw_files_and_the_fetch_command(tmp_path, dataset):
    with pytest.raises(UserError, match=f"reptile-tf fetch {dataset}"):
        P.prepare(dataset, tmp_path / "raw", tmp_path / "tfds")
    assert not (tmp_path / "tfds" / dataset).exists()


def test_prepare_cli_exits_2_on_missing_raw_files(tmp_path, capsys):
    code = cli.main(["prepare", "omniglot", "--raw", str(tmp_path / "nothing"), "--data-dir", str(tmp_path)])
    assert code == 2 and "images_background.zip" in capsys.readouterr().err


# --------------------------------------------------------------------------- synthetic raw data

def _png(value: int) -> bytes:
    img = Image.new("1", (105, 105), 1)
    for i in range(10 + value, 60 + value):
        img.putpixel((i, 50), 0)  # a dark stroke on a bright background
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _jpeg(size: tuple[int, int], value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 40)).save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.fixture
def tiny_omniglot(tmp_path) -> Path:
    """Two archives, 3 characters with 2 drawings each, no Vinyals split files."""
    raw = tmp_path / "raw"
    raw.mkdir()
    layout = {"images_background": ["Beta/character01", "Alpha/character02"], "images_evaluation": ["Gamma/character01"]}
    for archive, chars in layout.items():
        with zipfile.ZipFile(raw / f"{archive}.zip", "w") as zf:
            for c, char in enumerate(chars):
                for d in range(2):
                    zf.writestr(f"{archive}/{char}/{c:02d}_{d:02d}.png", _png(5 * d + c))
    return raw


def test_tiny_omniglot_builds_sorted_characters_and_reports_missing_vinyals(tiny_omniglot, tmp_path):
    data_dir = tmp_path / "tfds"
    P.prepare("omniglot", tiny_omniglot, data_dir)
    base, characters, vinyals = E.omniglot_base(data_dir)
    assert characters == ["Alpha/character02", "Beta/character01", "Gamma/character01"]
    assert base.shape == (3, 2, 28, 28, 1) and vinyals == {}
    with pytest.raises(UserError, match="no Vinyals 'train' split"):
        E.load_split_array("omniglot", "train", data_dir, protocol="vinyals")


def test_prepare_rebuilds_a_dataset_dir_without_dataset_info(tiny_omniglot, tmp_path):
    data_dir = tmp_path / "tfds"
    P.prepare("omniglot", tiny_omniglot, data_dir)
    info = Path(P.get_builder("omniglot", data_dir).data_dir) / "dataset_info.json"
    info.unlink()  # as a workflow tool does with a stale output file
    with pytest.raises(UserError, match="not prepared"):
        E.load_split_array("omniglot", "test", data_dir)
    P.prepare("omniglot", tiny_omniglot, data_dir)
    assert info.is_file()
    assert E.omniglot_base(data_dir)[0].shape == (3, 2, 28, 28, 1)


@pytest.fixture
def tiny_mini_imagenet(tmp_path) -> Path:
    """2 classes x 3 listed images per split; train lacks one image and has one 100x90 image."""
    raw = tmp_path / "raw"
    (raw / "splits" / "ravi").mkdir(parents=True)
    for s, split in enumerate(("train", "val", "test")):
        rows = [(f"n0{s}{c}0000{i}.jpg", f"n0{s}{c}") for c in range(2) for i in range(3)]
        with open(raw / "splits" / "ravi" / f"{split}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("filename", "label"), *rows])
        with zipfile.ZipFile(raw / f"images-{split}.zip", "w") as zf:
            for i, (filename, _) in enumerate(rows):
                if split == "train" and i == 5:
                    continue  # missing from the raw data
                size = (100, 90) if (split, i) == ("train", 1) else (84, 84)
                zf.writestr(f"images/{filename}", _jpeg(size, 20 * i))
    return raw


def test_tiny_mini_imagenet_uses_the_images_present_and_says_so(tiny_mini_imagenet, tmp_path, capsys):
    data_dir = tmp_path / "tfds"
    assert cli.main(["prepare", "mini_imagenet", "--raw", str(tiny_mini_imagenet), "--data-dir", str(data_dir)]) == 0
    assert '"min_per_class": 2' in capsys.readouterr().out
    counts = P.found_counts("mini_imagenet", data_dir)
    assert counts["images_found"]["train"] == {"n000": 3, "n001": 2}
    assert counts["images_listed"]["train"] == {"n000": 3, "n001": 3}
    with pytest.warns(UserWarning, match="different numbers of images"):
        train = E.load_split_array("mini_imagenet", "train", data_dir)
    assert train.shape == (2, 2, 84, 84, 3)  # the minimum count, resized to 84x84
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete splits load without a warning
        assert E.load_split_array("mini_imagenet", "test", data_dir).shape == (2, 3, 84, 84, 3)
    with pytest.warns(UserWarning, match="different numbers of images"):  # again, now from the cache
        E.load_split_array("mini_imagenet", "train", data_dir)


# --------------------------------------------------------------------------- official preprocessing option


def test_nearest_resize_is_the_official_reptile_and_maml_pipeline(omniglot_raw_dir):
    from reptile_tf.data import omniglot

    with zipfile.ZipFile(omniglot_raw_dir / "images_background.zip") as zf:
        members = sorted(m for m in zf.namelist() if m.endswith(".png"))[:5]
        for member in members:
            png = zf.read(member)
            # supervised_reptile/omniglot.py `Character._read_image`, without rotation
            official = np.array(Image.open(io.BytesIO(png)).resize((28, 28))).astype("float32")
            got = omniglot.resize_drawing(png, "nearest")
            assert got.dtype == np.uint8 and got.shape == (28, 28, 1)
            assert set(np.unique(got)) <= {0, 255}
            np.testing.assert_array_equal(got[:, :, 0].astype(np.float32) / 255.0, official)
            # cbfinn/maml data/omniglot_resized/resize_images.py asks for LANCZOS, which PIL ignores
            # for a 1-bit image: Finn's MAML code reads the same binary images (before its inversion)
            finn = np.asarray(Image.open(io.BytesIO(png)).resize((28, 28), resample=Image.LANCZOS), dtype=bool)
            np.testing.assert_array_equal(got[:, :, 0] == 255, finn)
            # the default is unchanged: LANCZOS on 8-bit grayscale
            expected = np.asarray(Image.open(io.BytesIO(png)).convert("L").resize((28, 28), resample=Image.LANCZOS))
            np.testing.assert_array_equal(omniglot.resize_drawing(png)[:, :, 0], expected)
    with pytest.raises(ValueError, match="unknown resize filter"):
        omniglot.resize_drawing(png, "bicubic")


def test_prepare_with_invert_stores_finns_polarity_records_it_and_runs_are_checked_against_it(
        tiny_omniglot, tmp_path):
    import tensorflow as tf

    from reptile_tf.data.tasks import check_omniglot_recipe

    nearest, inverted = tmp_path / "tfds_nearest", tmp_path / "tfds_finn"
    P.prepare("omniglot", tiny_omniglot, nearest, resize_filter="nearest")
    P.prepare("omniglot", tiny_omniglot, inverted, resize_filter="nearest", inverted=True)
    ours, finns = E.omniglot_base(nearest)[0], E.omniglot_base(inverted)[0]
    np.testing.assert_array_equal(finns, 255 - ours)
    # the loader's x/255 of the stored images is exactly Finn's `1.0 - image / 255` of ours
    classes, picks = tf.constant([[0, 1, 2]]), tf.constant([[0, 1, 1]])
    np.testing.assert_array_equal(E.gather_images(finns, classes, picks).numpy(),
                                  1.0 - ours[[0, 1, 2], [0, 1, 1]][None].astype(np.float32) / 255.0)
    assert E.omniglot_recipe(inverted) == {"omniglot_resize_filter": "nearest", "omniglot_inverted": True}
    assert E.omniglot_recipe(nearest) == {"omniglot_resize_filter": "nearest"}
    P.prepare("omniglot", tiny_omniglot, inverted, inverted=True)  # idempotent
    with pytest.raises(UserError, match=r"prepared with inverted images \(--invert\), not the archives' polarity"):
        P.prepare("omniglot", tiny_omniglot, inverted, inverted=False)
    with pytest.raises(UserError, match="prepared with the archives' polarity"):
        P.prepare("omniglot", tiny_omniglot, nearest, inverted=True)
    # a run is scored only on the images it trained on (its config.json "data")
    check_omniglot_recipe({"digest": "x", "omniglot_resize_filter": "nearest", "omniglot_inverted": True}, inverted)
    with pytest.raises(UserError, match=r"trained on Omniglot prepared with --resize-filter nearest, but .*tfds_finn "
                                        r"holds Omniglot prepared with --resize-filter nearest --invert"):
        check_omniglot_recipe({"omniglot_resize_filter": "nearest"}, inverted)
    with pytest.raises(UserError, match=r"the default options, .*`reptile-tf prepare omniglot --data-dir NEW_DIR`"):
        check_omniglot_recipe({}, nearest)


def test_prepare_with_nearest_resize_builds_binary_images_and_records_it(tiny_omniglot, tmp_path):
    data_dir = tmp_path / "tfds_nearest"
    P.prepare("omniglot", tiny_omniglot, data_dir, resize_filter="nearest")
    base, _, _ = E.omniglot_base(data_dir)
    assert set(np.unique(base)) == {0, 255}
    assert P.get_builder("omniglot", data_dir).info.metadata["resize_filter"] == "nearest"
    P.prepare("omniglot", tiny_omniglot, data_dir, resize_filter="nearest")  # idempotent
    with pytest.raises(UserError, match="prepared with resize filter 'nearest'"):
        P.prepare("omniglot", tiny_omniglot, data_dir, resize_filter="lanczos")
    default_dir = tmp_path / "tfds"
    P.prepare("omniglot", tiny_omniglot, default_dir)
    assert "resize_filter" not in (P.get_builder("omniglot", default_dir).info.metadata or {})
    assert len(np.unique(E.omniglot_base(default_dir)[0])) > 2  # LANCZOS keeps grey edges
