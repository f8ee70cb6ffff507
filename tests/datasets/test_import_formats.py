"""`chiron dataset encrypt` round trips for every source format, then inspect and verify."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from chiron.client.importers import DIGIT_CLASSES, FASHION_MNIST_CLASSES
from chiron.core.dataset import load_dataset
from chiron.core.keys import load_data_key

from .makers import make_images, write_cifar_batch, write_image_folder, write_mnist_folder


def encrypt_and_load(cli, tmp_path, src, *options):
    out, key = tmp_path / "out.chd", tmp_path / "out.key"
    result = cli("dataset", "encrypt", src, "--out", out, "--key", key, *options)
    assert result.code == 0, result.stderr
    header, x, y = load_dataset(out, load_data_key(key).key)
    return result, header, x, y


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("split", "prefix"), [(None, "train"), ("train", "train"), ("test", "t10k")]
)
def test_idx_folder(cli, tmp_path, gz, split, prefix):
    arrays = write_mnist_folder(tmp_path / "mnist", gz=gz)
    options = ["--split", split] if split else []
    result, header, x, y = encrypt_and_load(cli, tmp_path, tmp_path / "mnist", *options)
    expected_x, expected_y = arrays[prefix]
    assert np.array_equal(x[:, 0], expected_x) and np.array_equal(y, expected_y)
    assert header.schema.input_shape == (1, 6, 5)
    assert header.schema.class_names == DIGIT_CLASSES
    assert f"{len(expected_y)} records" in result.stdout
    assert header.dataset_id in result.stdout


def test_idx_images_file_with_labels_beside_it_and_fashion_names(cli, tmp_path):
    arrays = write_mnist_folder(tmp_path / "fashion", gz=True)
    src = tmp_path / "fashion" / "t10k-images-idx3-ubyte.gz"
    _, header, x, y = encrypt_and_load(cli, tmp_path, src, "--format", "idx")
    assert np.array_equal(x[:, 0], arrays["t10k"][0]) and np.array_equal(y, arrays["t10k"][1])
    assert header.schema.class_names == FASHION_MNIST_CLASSES


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_npz(cli, tmp_path, dtype):
    x, y = make_images(20, (2, 3, 4), seed=3)
    np.savez(tmp_path / "d.npz", x=x.astype(dtype), y=y)
    _, header, x_read, y_read = encrypt_and_load(cli, tmp_path, tmp_path / "d.npz")
    assert header.schema.dtype == ("uint8" if dtype == np.uint8 else "float32")
    assert header.schema.num_classes == int(y.max()) + 1
    assert np.array_equal(x_read, x.astype(x_read.dtype)) and np.array_equal(y_read, y)


def test_npz_with_class_names(cli, tmp_path):
    x, y = make_images(5, (4,), seed=4)
    names = np.array([f"class {i}" for i in range(12)])
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=names)
    _, header, _, _ = encrypt_and_load(cli, tmp_path, tmp_path / "d.npz", "--format", "npz")
    assert header.schema.class_names == tuple(names) and header.schema.num_classes == 12


def test_csv_with_integer_labels(cli, tmp_path):
    rows = ["a,label,b", "1.5,0,2", " -3,2,4e-1", "", "0,1,7"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    _, header, x, y = encrypt_and_load(cli, tmp_path, tmp_path / "d.csv")
    assert header.schema.input_shape == (2,) and header.schema.dtype == "float32"
    assert np.allclose(x, [[1.5, 2], [-3, 0.4], [0, 7]]) and list(y) == [0, 2, 1]
    assert header.schema.num_classes == 3


def test_csv_with_named_labels_and_another_label_column(cli, tmp_path):
    (tmp_path / "d.csv").write_text("kind,f1\ncat,1\ndog,2\ncat,3\n")
    _, header, x, y = encrypt_and_load(cli, tmp_path, tmp_path / "d.csv", "--label-column", "kind")
    assert header.schema.class_names == ("cat", "dog")
    assert list(y) == [0, 1, 0] and x.ravel().tolist() == [1, 2, 3]


@pytest.mark.parametrize("color", [False, True])
def test_image_folder(cli, tmp_path, color):
    rng = np.random.default_rng(5)
    shape = (7, 9, 3) if color else (7, 9)
    images = {
        name: [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(count)]
        for name, count in (("ants", 2), ("bees", 3))
    }
    write_image_folder(tmp_path / "pics", images)
    _, header, x, y = encrypt_and_load(cli, tmp_path, tmp_path / "pics")
    assert header.schema.input_shape == ((3, 7, 9) if color else (1, 7, 9))
    assert header.schema.class_names == ("ants", "bees")
    assert list(y) == [0, 0, 1, 1, 1]
    first = images["ants"][0]
    assert np.array_equal(x[0], first.transpose(2, 0, 1) if color else first[None])


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_folder(cli, tmp_path, split):
    folder = tmp_path / "cifar"
    folder.mkdir()
    batches = {}
    for name, count, seed in (("data_batch_1", 4, 1), ("data_batch_2", 3, 2), ("test_batch", 2, 3)):
        batches[name] = make_images(count, (3, 32, 32), seed)
        write_cifar_batch(folder / f"{name}.bin", *batches[name])
    names = [f"n{i}" for i in range(10)]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    _, header, x, y = encrypt_and_load(cli, tmp_path, folder, "--split", split)
    parts = ["test_batch"] if split == "test" else ["data_batch_1", "data_batch_2"]
    assert np.array_equal(x, np.concatenate([batches[p][0] for p in parts]))
    assert np.array_equal(y, np.concatenate([batches[p][1] for p in parts]))
    assert header.schema.class_names == tuple(names)


def test_cifar10_single_batch_file_without_names(cli, tmp_path):
    x, y = make_images(3, (3, 32, 32), seed=6)
    write_cifar_batch(tmp_path / "test_batch.bin", x, y)
    _, header, x_read, _ = encrypt_and_load(cli, tmp_path, tmp_path / "test_batch.bin")
    assert np.array_equal(x_read, x) and header.schema.class_names == ()


def test_key_file_is_private_and_bound_to_the_dataset(cli, tmp_path):
    write_mnist_folder(tmp_path / "m", gz=False)
    _, header, _, _ = encrypt_and_load(cli, tmp_path, tmp_path / "m")
    key_file = tmp_path / "out.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_data_key(key_file).dataset_id == header.dataset_id


def test_inspect_shows_the_public_header_only(cli, tmp_path):
    write_mnist_folder(tmp_path / "fashion-mnist", gz=True)
    _, header, _, _ = encrypt_and_load(cli, tmp_path, tmp_path / "fashion-mnist")
    text = cli("dataset", "inspect", tmp_path / "out.chd")
    assert text.code == 0
    for fact in (header.dataset_id, "1 x 6 x 5", "uint8", "Ankle boot", "30", "format"):
        assert fact in text.stdout
    as_json = cli("dataset", "inspect", tmp_path / "out.chd", "--json")
    document = json.loads(as_json.stdout)
    assert document["dataset_id"] == header.dataset_id
    assert document["record_count"] == 30 and document["chunk_count"] == 1
    assert document["schema"]["class_names"] == list(FASHION_MNIST_CLASSES)
    assert document["format_version"] == 1


def test_verify_ok(cli, tmp_path):
    write_mnist_folder(tmp_path / "m", gz=False)
    encrypt_and_load(cli, tmp_path, tmp_path / "m")
    result = cli("dataset", "verify", tmp_path / "out.chd", "--key", tmp_path / "out.key")
    assert result.code == 0 and result.stdout.startswith("ok: 30 records")
