"""Datasets and preprocessing of the edge, on real files the tests write."""
import socket

import numpy as np
import pytest

from runtime.edge.data import CIFAR, batches, open_dataset, preprocess_batch
from runtime.errors import UserError

CIFAR_INPUT = {"shape": [None, 3, 32, 32], "preprocess": {
    "resize": None, "crop": None, "scale": 1 / 255.0, "mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}}


def test_preprocessing_equals_torchvision_totensor_then_normalize():
    import torchvision.transforms as T
    from PIL import Image
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    pp = CIFAR_INPUT["preprocess"]
    seed = T.Compose([T.ToTensor(), T.Normalize(pp["mean"], pp["std"])])
    expected = np.stack([seed(Image.fromarray(img)).numpy() for img in images])
    ours = preprocess_batch(images, pp)
    assert ours.dtype == np.float32 and ours.shape == (3, 3, 32, 32)
    assert np.abs(ours - expected).max() < 1e-5


def _cifar_records(n, label_bytes, label_at, rng):
    labels = rng.randint(0, 100, size=n).astype(np.uint8)
    pixels = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
    records = np.zeros((n, label_bytes + 3072), dtype=np.uint8)
    records[:, label_at] = labels
    records[:, label_bytes:] = pixels.reshape(n, -1)
    return records, labels, pixels.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_cifar_binary_test_set_is_read_without_pickle(name, tmp_path):
    _, _, member, label_bytes, label_at = CIFAR[name]
    records, labels, images = _cifar_records(10, label_bytes, label_at, np.random.RandomState(1))
    path = tmp_path / member
    path.parent.mkdir(parents=True)
    records.tofile(str(path))
    data = open_dataset(name, CIFAR_INPUT, 100, data_dir=str(tmp_path))
    assert len(data) == 10 and data.labels.tolist() == labels.tolist()
    assert np.array_equal(data.images(np.arange(10)), images)


def test_cifar_offline_and_absent_names_the_url_and_folder(tmp_path):
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        pytest.skip("this machine is online: the test would download CIFAR-100")
    except OSError:
        pass
    with pytest.raises(UserError) as err:
        open_dataset("cifar100", CIFAR_INPUT, 100, data_dir=str(tmp_path / "data"))
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in str(err.value)
    assert str(tmp_path / "data") in str(err.value)


def test_npz_and_its_bad_forms(tmp_path):
    x = np.random.RandomState(2).randint(0, 256, size=(5, 32, 32, 3)).astype(np.uint8)
    np.savez(str(tmp_path / "ok.npz"), x=x, y=np.arange(5))
    data = open_dataset("npz:" + str(tmp_path / "ok.npz"), CIFAR_INPUT, 100)
    assert np.array_equal(data.images(np.array([4, 0])), x[[4, 0]])
    np.savez(str(tmp_path / "float.npz"), x=x.astype(np.float32), y=np.arange(5))
    np.savez(str(tmp_path / "nolabels.npz"), x=x)
    for name, fragment in (("float.npz", "must be uint8"), ("nolabels.npz", "it holds x and no y"),
                           ("missing.npz", "not found")):
        with pytest.raises(UserError, match=fragment):
            open_dataset("npz:" + str(tmp_path / name), CIFAR_INPUT, 100)
    with pytest.raises(UserError, match="unknown dataset"):
        open_dataset("imagenet", CIFAR_INPUT, 100)


def test_folder_dataset_resizes_as_the_manifest_says(tmp_path):
    from PIL import Image
    rng = np.random.RandomState(3)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.randint(0, 256, size=(48, 64, 3)).astype(np.uint8)).save(
                str(tmp_path / cls / "{}.png".format(i)))
    spec = {"shape": [None, 3, 24, 24], "preprocess": {"resize": 28, "crop": [24, 24], "scale": 1 / 255.0,
                                                       "mean": None, "std": None}}
    data = open_dataset("folder:" + str(tmp_path), spec, 2)
    assert data.labels.tolist() == [0, 0, 1, 1]
    images = data.images(np.arange(4))
    assert images.shape == (4, 24, 24, 3) and images.dtype == np.uint8
    # the same resize-then-centre-crop done by Pillow directly
    img = Image.open(str(tmp_path / "cat" / "0.png")).resize((37, 28), Image.BILINEAR).crop((6, 2, 30, 26))
    assert np.array_equal(images[0], np.asarray(img))


def test_synthetic_is_deterministic_and_batches_cover_the_limit():
    a = open_dataset("synthetic", CIFAR_INPUT, 100, limit=10, seed=5)
    b = open_dataset("synthetic", CIFAR_INPUT, 100, limit=10, seed=5)
    assert np.array_equal(a.images(np.arange(10)), b.images(np.arange(10)))
    plan = batches(a, 4, limit=10)
    assert [len(p) for p in plan] == [4, 4, 2] and np.concatenate(plan).tolist() == list(range(10))
    shuffled = np.concatenate(batches(a, 3, shuffle=True, seed=1)).tolist()
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
