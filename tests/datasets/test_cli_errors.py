"""Bad input, wrong keys and tampering through `chiron dataset`: one line, non-zero, nothing left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chiron.client import cli_dataset
from chiron.client.importers import ImportedDataset
from chiron.core.keys import DataKey
from chiron.core.schema import DatasetSchema

from .makers import (
    leftovers,
    make_images,
    write_cifar_batch,
    write_idx,
    write_image_folder,
    write_mnist_folder,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def assert_refused(cli, tmp_path, src, message, *options):
    """Encrypting SRC fails with one line naming the problem, and leaves no file behind."""
    out, key = tmp_path / "out.chd", tmp_path / "out.key"
    result = cli("dataset", "encrypt", src, "--out", out, "--key", key, *options)
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chiron: error: "), result.stderr
    assert message in lines[0], lines[0]
    assert leftovers(tmp_path, "out.chd", "out.key") == []


def truncated_idx(tmp_path, gz):
    folder = tmp_path / "m"
    write_mnist_folder(folder, gz=gz)
    images = folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    data = images.read_bytes()
    images.write_bytes(data[: len(data) - 7])
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx(cli, tmp_path, gz):
    assert_refused(cli, tmp_path, truncated_idx(tmp_path, gz), "truncated IDX file")


def test_idx_labels_and_images_disagree(cli, tmp_path):
    folder = tmp_path / "m"
    write_mnist_folder(folder, gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(29, np.uint8), gz=False)
    assert_refused(cli, tmp_path, folder, "30 images but train-labels-idx1-ubyte has 29 labels")


def test_idx_label_out_of_range(cli, tmp_path):
    folder = tmp_path / "m"
    write_mnist_folder(folder, gz=False)
    labels = np.zeros(30, np.uint8)
    labels[4] = 10
    write_idx(folder / "train-labels-idx1-ubyte", labels, gz=False)
    assert_refused(cli, tmp_path, folder, "record 4 has label 10, outside 0..9")


def test_ragged_csv(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,1\n")
    assert_refused(cli, tmp_path, tmp_path / "d.csv", "ragged CSV")


def test_csv_non_numeric_feature(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,0\nhigh,1\n")
    assert_refused(cli, tmp_path, tmp_path / "d.csv", "line 3, column 'a': 'high' is not a number")


def test_csv_missing_label_column(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,0\n")
    assert_refused(cli, tmp_path, tmp_path / "d.csv", "has no column 'label'")


def test_csv_negative_label(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,-1\n3,1\n")
    assert_refused(cli, tmp_path, tmp_path / "d.csv", "label -1 is negative")


def test_mixed_image_sizes(cli, tmp_path):
    write_image_folder(
        tmp_path / "pics",
        {"a": [np.zeros((4, 4), np.uint8)], "b": [np.zeros((5, 4), np.uint8)]},
    )
    assert_refused(cli, tmp_path, tmp_path / "pics", "mixed image sizes")


def test_damaged_image(cli, tmp_path):
    write_image_folder(tmp_path / "pics", {"a": [np.zeros((4, 4), np.uint8)], "b": []})
    (tmp_path / "pics" / "b" / "broken.png").write_bytes(b"not really a png")
    assert_refused(cli, tmp_path, tmp_path / "pics", "broken.png: not an image")


def test_cifar_label_out_of_range(cli, tmp_path):
    x, y = make_images(3, (3, 32, 32), seed=1)
    y[2] = 11
    write_cifar_batch(tmp_path / "data_batch_1.bin", x, y)
    assert_refused(cli, tmp_path, tmp_path / "data_batch_1.bin", "record 2 has label 11")


def test_truncated_cifar(cli, tmp_path):
    x, y = make_images(2, (3, 32, 32), seed=1)
    write_cifar_batch(tmp_path / "test_batch.bin", x, y)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    assert_refused(cli, tmp_path, tmp_path, "truncated CIFAR-10 batch", "--split", "test")


def test_npz_labels_out_of_range_of_class_names(cli, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=[0, 2], class_names=["a", "b"])
    assert_refused(cli, tmp_path, tmp_path / "d.npz", "record 1 has label 2, outside 0..1")


def test_npz_negative_label(cli, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3)), y=[-1, 1])
    assert_refused(cli, tmp_path, tmp_path / "d.npz", "label -1 is negative")


def test_npz_with_pickled_objects_is_never_loaded(cli, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.array([{}, {}], dtype=object), y=[0, 1])
    assert_refused(cli, tmp_path, tmp_path / "d.npz", "pickled objects are never loaded")


@pytest.mark.parametrize(
    "make",
    [
        lambda p: (p / "d.csv").write_text("a,label\n"),
        lambda p: (p / "d.csv").write_text(""),
        lambda p: np.savez(p / "d.npz", x=np.zeros((0, 3)), y=np.zeros(0)),
        lambda p: write_image_folder(p / "pics", {"a": [], "b": []}),
    ],
)
def test_empty_data_set(cli, tmp_path, make):
    make(tmp_path)
    src = next(p for p in tmp_path.iterdir() if p.name in ("d.csv", "d.npz", "pics"))
    assert_refused(cli, tmp_path, src, "the data set is empty")


def test_unreadable_path(cli, tmp_path):
    assert_refused(cli, tmp_path, tmp_path / "nowhere.npz", "source not found")


def test_unknown_format(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("just words")
    assert_refused(cli, tmp_path, tmp_path / "notes.txt", "cannot tell the format")
    assert_refused(cli, tmp_path, tmp_path / "notes.txt", "unknown format", "--format", "parquet")


def test_split_only_for_split_formats(cli, tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,1\n")
    assert_refused(cli, tmp_path, tmp_path / "d.csv", "--split applies to", "--split", "test")


def test_corrupt_gzip(cli, tmp_path):
    folder = tmp_path / "m"
    write_mnist_folder(folder, gz=True)
    images = folder / "train-images-idx3-ubyte.gz"
    data = bytearray(images.read_bytes())
    data[30:40] = b"\xff" * 10
    images.write_bytes(bytes(data))
    out = tmp_path / "out.chd"
    result = cli("dataset", "encrypt", folder, "--out", out, "--key", tmp_path / "out.key")
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1
    assert leftovers(tmp_path, "out.chd", "out.key") == []


def test_existing_outputs_are_kept_unless_forced(cli, tmp_path):
    write_mnist_folder(tmp_path / "m", gz=False)
    for name in ("out.chd", "out.key"):
        (tmp_path / name).write_text("precious")
        result = cli(
            "dataset", "encrypt", tmp_path / "m", "--out", tmp_path / "out.chd",
            "--key", tmp_path / "out.key",
        )  # fmt: skip
        assert result.code != 0 and "refusing to overwrite" in result.stderr
        assert (tmp_path / name).read_text() == "precious"
        (tmp_path / name).unlink()
    (tmp_path / "out.chd").write_text("old")
    (tmp_path / "out.key").write_text("old")
    forced = cli(
        "dataset", "encrypt", tmp_path / "m", "--out", tmp_path / "out.chd",
        "--key", tmp_path / "out.key", "--force",
    )  # fmt: skip
    assert forced.code == 0, forced.stderr
    ok = cli("dataset", "verify", tmp_path / "out.chd", "--key", tmp_path / "out.key")
    assert ok.code == 0


def test_same_file_for_dataset_and_key(cli, tmp_path):
    write_mnist_folder(tmp_path / "m", gz=False)
    same = tmp_path / "both"
    result = cli("dataset", "encrypt", tmp_path / "m", "--out", same, "--key", same)
    assert result.code == 2 and "must be different files" in result.stderr
    assert not same.exists()


def test_interrupt_while_encrypting_leaves_nothing(cli, tmp_path, monkeypatch):
    schema = DatasetSchema((64, 64), "uint8", 2)

    def batches():
        yield np.zeros((400, 64, 64), np.uint8), np.zeros(400, np.int64)
        raise KeyboardInterrupt

    monkeypatch.setattr(
        cli_dataset, "open_source", lambda *a, **k: ImportedDataset(schema, 800, batches(), "x")
    )
    result = cli(
        "dataset", "encrypt", tmp_path, "--out", tmp_path / "out.chd", "--key", tmp_path / "out.key"
    )
    assert result.code != 0
    assert leftovers(tmp_path, "out.chd", "out.key") == []


@pytest.fixture
def encrypted(cli, tmp_path):
    write_mnist_folder(tmp_path / "m", gz=False, train=3000)
    out, key = tmp_path / "d.chd", tmp_path / "d.key"
    assert cli("dataset", "encrypt", tmp_path / "m", "--out", out, "--key", key).code == 0
    return out, key


def assert_verify_fails(cli, dataset, key, message):
    result = cli("dataset", "verify", dataset, "--key", key)
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not result.stdout.startswith("ok")


def test_verify_wrong_key(cli, tmp_path, encrypted):
    dataset, _ = encrypted
    dataset_id = json.loads(cli("dataset", "inspect", dataset, "--json").stdout)["dataset_id"]
    DataKey(dataset_id, bytes(32)).save(tmp_path / "forged.key")
    assert_verify_fails(cli, dataset, tmp_path / "forged.key", "wrong key")


def test_verify_key_of_another_dataset(cli, tmp_path, encrypted):
    dataset, _ = encrypted
    (tmp_path / "other").mkdir()
    write_mnist_folder(tmp_path / "other" / "m", gz=False)
    other_key = tmp_path / "other" / "o.key"
    cli("dataset", "encrypt", tmp_path / "other" / "m", "--out", tmp_path / "other" / "o.chd",
        "--key", other_key)  # fmt: skip
    assert_verify_fails(cli, dataset, other_key, "is the key of dataset")


def test_verify_not_a_key_file(cli, tmp_path, encrypted):
    dataset, _ = encrypted
    cli("keygen", "--out", tmp_path / "owner.key")
    assert_verify_fails(cli, dataset, tmp_path / "owner.key", "not a dataset key")


@pytest.mark.parametrize("where", ["header", "first chunk", "last chunk", "truncate", "append"])
def test_verify_tampered(cli, encrypted, where):
    dataset, key = encrypted
    data = bytearray(dataset.read_bytes())
    if where == "truncate":
        del data[-100:]
    elif where == "append":
        data += b"\x00" * 16
    else:
        position = {"header": 120, "first chunk": 1000, "last chunk": len(data) - 3}[where]
        data[position] ^= 0x01
    dataset.write_bytes(bytes(data))
    result = cli("dataset", "verify", dataset, "--key", key)
    assert result.code != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "chiron: error:" in result.stderr


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist(cli, tmp_path):
    for split, count in (("train", 60000), ("test", 10000)):
        out, key = tmp_path / f"{split}.chd", tmp_path / f"{split}.key"
        result = cli("dataset", "encrypt", FASHION_MNIST, "--split", split, "--out", out,
                     "--key", key)  # fmt: skip
        assert result.code == 0, result.stderr
        header = json.loads(cli("dataset", "inspect", out, "--json").stdout)
        assert header["record_count"] == count
        assert header["schema"]["input_shape"] == [1, 28, 28]
        assert header["schema"]["class_names"][-1] == "Ankle boot"
        verified = cli("dataset", "verify", out, "--key", key)
        assert verified.code == 0 and verified.stdout.startswith(f"ok: {count} records")
