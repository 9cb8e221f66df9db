"""The MNIST cache is not trusted forever (issue 14, item 8): a cached copy is re-checked on every
load (as Keras's get_file re-checks a cached file's hash), re-downloaded when damaged or
different, and files in $FASTNN_DATA_DIR must be MNIST too. No network: a fake urlopen."""
import gzip
import hashlib
import os
import time

import numpy as np
import pytest
from test_datasets import (
    DATA_DIR,
    IDX_NAMES,
    OSSCI,
    FakeNet,
    assert_same_data,
    idx_bytes,
    npz_bytes,
    pin_to,
    real_gz,
    write_idx_set,
)

from fastnn.datasets import mnist


@pytest.fixture(autouse=True)
def net(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTNN_DATA_DIR", raising=False)
    fake = FakeNet()
    monkeypatch.setattr(mnist, "urlopen", fake)
    return fake


@pytest.fixture(scope="module")
def sample():
    return mnist.load_sample()


def tampered(data, n=100):
    """The issue's case: the first n digits, every label 0."""
    (x_train, y_train), (x_test, y_test) = data
    return ((x_train[:n], np.zeros(n, np.uint8)), (x_test[:n], np.zeros(n, np.uint8)))


def serve_idx(net, data):
    for name, array in zip(IDX_NAMES, (*data[0], *data[1])):
        net.files[OSSCI + name + ".gz"] = gzip.compress(idx_bytes(array))


def test_tampered_cached_npz_is_not_returned(sample):
    os.makedirs(mnist.cache_dir())
    path = os.path.join(mnist.cache_dir(), "mnist.npz")
    with open(path, "wb") as f:
        f.write(npz_bytes(tampered(sample)))
    with pytest.raises(ValueError, match="not the MNIST data set") as err:
        mnist.load_data(download=False)
    assert path in str(err.value) and "download=True" in str(err.value)
    assert os.path.exists(path)       # download=False: reported, left alone


def test_tampered_cached_npz_is_downloaded_again(net, monkeypatch, sample):
    pin_to(monkeypatch, sample)       # the sample plays MNIST; the pins still reject tampering
    os.makedirs(mnist.cache_dir())
    path = os.path.join(mnist.cache_dir(), "mnist.npz")
    with open(path, "wb") as f:
        f.write(npz_bytes(tampered(sample, 4000)))
    serve_idx(net, sample)
    assert_same_data(mnist.load_data(), sample)
    assert not os.path.exists(path)
    assert sorted(os.listdir(mnist.cache_dir())) == sorted(n + ".gz" for n in IDX_NAMES)


@pytest.mark.mnist
def test_tampered_cache_replaced_by_real_mnist(net):
    os.makedirs(mnist.cache_dir())
    full = mnist._load_folder(DATA_DIR)
    with open(os.path.join(mnist.cache_dir(), "mnist.npz"), "wb") as f:
        f.write(npz_bytes(tampered(full)))
    net.files = {OSSCI + name + ".gz": real_gz(name) for name in IDX_NAMES}
    data = mnist.load_data()
    assert_same_data(data, full)


def test_one_changed_label_in_a_cached_idx_file(monkeypatch, sample):
    pin_to(monkeypatch, sample)
    (x_train, y_train), test = sample
    y_bad = y_train.copy()
    y_bad[123] = (y_bad[123] + 1) % 10
    write_idx_set(mnist.cache_dir(), ((x_train, y_bad), test))
    with pytest.raises(ValueError, match="SHA-256") as err:
        mnist.load_data(download=False)
    assert os.path.join(mnist.cache_dir(), "train-labels-idx1-ubyte.gz") in str(err.value)


def test_cached_file_changed_after_a_good_load_is_caught(monkeypatch, sample):
    pin_to(monkeypatch, sample)
    write_idx_set(mnist.cache_dir(), sample, gz=False)
    assert_same_data(mnist.load_data(download=False), sample)
    path = os.path.join(mnist.cache_dir(), "t10k-labels-idx1-ubyte")
    st = os.stat(path)
    time.sleep(0.05)                # past the filesystem's timestamp granularity
    with open(path, "r+b") as f:    # one label changed in place: same inode, same size
        f.seek(8)
        first = f.read(1)[0]
        f.seek(8)
        f.write(bytes([(first + 1) % 10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))    # mtime put back: only ctime tells
    with pytest.raises(ValueError, match="SHA-256") as err:
        mnist.load_data(download=False)
    assert path in str(err.value)


def test_a_verified_file_is_not_hashed_again(monkeypatch, sample):
    pin_to(monkeypatch, sample)
    write_idx_set(mnist.cache_dir(), sample)
    mnist.load_data(download=False)
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(mnist.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    assert_same_data(mnist.load_data(download=False), sample)
    assert calls == []


# ---- $FASTNN_DATA_DIR ---------------------------------------------------------------------------
def test_data_dir_subset_is_not_mnist(tmp_path, monkeypatch, sample):
    (tmp_path / "mnist.npz").write_bytes(npz_bytes(tampered(sample)))
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(mnist.NotMNISTError, match=r"shape \(100, 28, 28\).*\(60000, 28, 28\)") \
            as err:
        mnist.load_data(download=False)
    assert str(tmp_path / "mnist.npz") in str(err.value)
    assert (tmp_path / "mnist.npz").exists()   # the user's file is never removed


def test_data_dir_labels_out_of_range(tmp_path, monkeypatch, sample):
    pin_to(monkeypatch, sample)
    (x_train, y_train), test = sample
    y_bad = y_train.copy()
    y_bad[5] = 10
    write_idx_set(tmp_path, ((x_train, y_bad), test))
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="label 10 outside 0-9") as err:
        mnist.load_data(download=False)
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(err.value)


def test_data_dir_same_shapes_other_content(tmp_path, monkeypatch, sample):
    pin_to(monkeypatch, sample)
    (x_train, y_train), test = sample
    x_bad = x_train.copy()
    x_bad[0, 0, 0] ^= 1
    (tmp_path / "digits.npz").write_bytes(npz_bytes(((x_bad, y_train), test)))
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="x_train.*SHA-256"):
        mnist.load_data(path="digits.npz", download=False)


def test_absolute_path_outside_the_cache_is_never_removed(tmp_path, sample, net):
    path = tmp_path / "mine.npz"
    path.write_bytes(npz_bytes(tampered(sample)))
    with pytest.raises(ValueError, match="not the MNIST data set"):
        mnist.load_data(path=str(path))
    assert path.exists() and net.calls == []


def test_bundled_sample_still_loads(sample):
    assert sample[0][0].shape == (4000, 28, 28)
