"""fastnn.datasets.mnist: where the data comes from ($FASTNN_DATA_DIR, the cache, a download), the
file forms it reads, the bundled sample, and what happens when files are missing or damaged.

Tests marked `mnist` read the real files in $FASTNN_DATA_DIR. No test touches the network or the
real home folder: `mnist.urlopen` is replaced by a fake serving local bytes, and $FASTNN_HOME
points into tmp_path."""
import gzip
import hashlib
import io
import os
import struct
import time
from urllib.error import URLError

import numpy as np
import pytest

from fastnn.datasets import mnist

DATA_DIR = os.environ.get("FASTNN_DATA_DIR")
IDX_NAMES = list(mnist.IDX_SHA256)  # train images, train labels, test images, test labels
OSSCI = mnist.IDX_MIRRORS[0]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


class FakeNet:
    """Stands in for urlopen: serves `files[url]`, raises URLError for any other URL, and
    records every call."""

    def __init__(self, files=None):
        self.files = files or {}
        self.calls = []

    def __call__(self, url, timeout):
        self.calls.append((url, timeout))
        if url not in self.files:
            raise URLError(f"no route to host (fake) for {url}")
        body = self.files[url]
        return body() if callable(body) else io.BytesIO(body)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache, no $FASTNN_DATA_DIR (tests that want it set it), and no network."""
    monkeypatch.setenv("FASTNN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTNN_DATA_DIR", raising=False)
    net = FakeNet()
    monkeypatch.setattr(mnist, "urlopen", net)
    return net


@pytest.fixture(scope="module")
def full():
    return mnist._load_folder(DATA_DIR)


@pytest.fixture(scope="module")
def sample():
    return mnist.load_sample()


def cache():
    return mnist.cache_dir()


def cache_files():
    return sorted(os.listdir(cache())) if os.path.isdir(cache()) else []


def assert_same_data(a, b):
    for got, want in zip((*a[0], *a[1]), (*b[0], *b[1])):
        np.testing.assert_array_equal(got, want)


def assert_keras_form(data, n_train, n_test):
    (x_train, y_train), (x_test, y_test) = data
    assert x_train.shape == (n_train, 28, 28) and y_train.shape == (n_train,)
    assert x_test.shape == (n_test, 28, 28) and y_test.shape == (n_test,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8 and a.flags.c_contiguous and a.flags.writeable


def idx_bytes(array):
    return (struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.tobytes())


def write_idx_set(folder, data, gz=True):
    os.makedirs(folder, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = data
    for name, array in zip(IDX_NAMES, (x_train, y_train, x_test, y_test)):
        path = os.path.join(folder, name + (".gz" if gz else ""))
        with (gzip.open if gz else open)(path, "wb") as f:
            f.write(idx_bytes(array))


def npz_bytes(data):
    (x_train, y_train), (x_test, y_test) = data
    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return buf.getvalue()


def real_gz(name):
    with open(os.path.join(DATA_DIR, name + ".gz"), "rb") as f:
        return f.read()


# ---------------------------------------------------------------- the full set, local forms
@pytest.mark.mnist
def test_full_set_from_data_dir(monkeypatch):
    monkeypatch.setenv("FASTNN_DATA_DIR", DATA_DIR)
    data = mnist.load_data(download=False)
    assert_keras_form(data, 60000, 10000)
    (x_train, y_train), (x_test, y_test) = data
    assert y_train[:10].tolist() == FIRST_TRAIN_LABELS
    assert y_test[:10].tolist() == FIRST_TEST_LABELS
    assert np.bincount(y_train).tolist() == TRAIN_COUNTS
    assert np.bincount(y_test).tolist() == TEST_COUNTS
    assert x_train.min() == 0 and x_train.max() == 255 and x_test.max() == 255
    assert round(x_train.mean() / 255, 4) == 0.1307 and round(x_train.std() / 255, 4) == 0.3081
    assert not os.path.exists(cache())  # reading local files writes nothing


@pytest.mark.mnist
def test_npz_form_and_path_argument(tmp_path, monkeypatch, full):
    (x_train, y_train), (x_test, y_test) = full
    np.savez(tmp_path / "digits.npz",
             x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    data = mnist.load_data(path="digits.npz", download=False)
    assert_keras_form(data, 60000, 10000)
    assert_same_data(data, full)
    with pytest.raises(mnist.DataNotFoundError):  # the default name, mnist.npz, is not there
        mnist.load_data(download=False)


@pytest.mark.mnist
def test_ungzipped_idx_form(tmp_path, monkeypatch, full):
    for name in IDX_NAMES:
        (tmp_path / name).write_bytes(gzip.decompress(real_gz(name)))
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    data = mnist.load_data(download=False)
    assert_keras_form(data, 60000, 10000)
    assert_same_data(data, full)


def pin_to(monkeypatch, data):
    """Make `data` (e.g. the sample) the data set load_data() accepts, as the real pins make it
    accept MNIST only."""
    arrays = (*data[0], *data[1])
    monkeypatch.setattr(mnist, "SHAPES", {n: a.shape for n, a in zip(IDX_NAMES, arrays)})
    monkeypatch.setattr(mnist, "IDX_SHA256", {n: hashlib.sha256(idx_bytes(a)).hexdigest()
                                              for n, a in zip(IDX_NAMES, arrays)})


def test_data_dir_comes_before_cache(tmp_path, monkeypatch, sample):
    pin_to(monkeypatch, sample)
    write_idx_set(cache(), sample)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "mnist.npz").write_bytes(npz_bytes(sample))
    reads, read_idx = [], mnist._read_idx
    monkeypatch.setattr(mnist, "_read_idx", lambda p, ndim: reads.append(p) or read_idx(p, ndim))
    monkeypatch.setenv("FASTNN_DATA_DIR", str(data_dir))
    assert_same_data(mnist.load_data(download=False), sample)
    assert reads == []   # the data dir's npz, not the cache's IDX files
    monkeypatch.delenv("FASTNN_DATA_DIR")
    data = mnist.load_data(download=False)  # now the cache's IDX files
    assert_keras_form(data, 4000, 1000)
    assert_same_data(data, sample)
    assert len(reads) == 4 and all(p.startswith(cache()) for p in reads)


# ---------------------------------------------------------------- the bundled sample
def test_sample(sample):
    assert_keras_form(sample, 4000, 1000)
    (x_train, y_train), (x_test, y_test) = sample
    assert y_train[:10].tolist() == FIRST_TRAIN_LABELS
    assert y_test[:10].tolist() == FIRST_TEST_LABELS
    assert np.bincount(y_train).tolist() == [379, 444, 397, 392, 430, 350, 405, 433, 373, 397]
    assert np.bincount(y_test).tolist() == [85, 126, 116, 107, 110, 87, 87, 99, 89, 94]
    assert x_train.min() == 0 and x_train.max() == 255
    path = os.path.join(os.path.dirname(mnist.__file__), mnist.SAMPLE_FILE)
    assert os.path.getsize(path) < 1.5e6
    assert os.path.exists(os.path.join(os.path.dirname(path), "MNIST_SAMPLE_LICENSE.txt"))


@pytest.mark.mnist
def test_sample_is_the_first_digits_of_the_full_set(sample, full):
    (x_train, y_train), (x_test, y_test) = full
    assert_same_data(sample, ((x_train[:4000], y_train[:4000]), (x_test[:1000], y_test[:1000])))


# ---------------------------------------------------------------- downloads (fake network)
@pytest.mark.mnist
def test_download_idx_files_with_the_real_pins(isolated, full):
    # Keras's npz is unreachable; the first IDX mirror serves the real files.
    isolated.files = {OSSCI + name + ".gz": real_gz(name) for name in IDX_NAMES}
    data = mnist.load_data()
    assert_keras_form(data, 60000, 10000)
    assert_same_data(data, full)
    assert [url for url, _ in isolated.calls] == [mnist.NPZ_URL] + [
        OSSCI + name + ".gz" for name in IDX_NAMES]
    assert all(0 < t <= mnist.SOCKET_TIMEOUT for _, t in isolated.calls)
    assert cache_files() == sorted(name + ".gz" for name in IDX_NAMES)  # no temp files left
    isolated.files = {}
    assert_same_data(mnist.load_data(download=False), full)  # now served from the cache


def test_download_npz(isolated, monkeypatch, sample):
    body = npz_bytes(sample)
    monkeypatch.setattr(mnist, "NPZ_SHA256", hashlib.sha256(body).hexdigest())
    isolated.files = {mnist.NPZ_URL: body}
    data = mnist.load_data()
    assert_same_data(data, sample)
    assert cache_files() == ["mnist.npz"]
    assert len(isolated.calls) == 1


def test_download_with_wrong_checksum_is_rejected(isolated, sample):
    # Well-formed files, but not MNIST's: the real pins reject all of them.
    files = {mnist.NPZ_URL: npz_bytes(sample)}
    for mirror in mnist.IDX_MIRRORS:
        for name, array in zip(IDX_NAMES, (*sample[0], *sample[1])):
            files[mirror + name + ".gz"] = gzip.compress(idx_bytes(array))
    isolated.files = files
    with pytest.raises(mnist.DataNotFoundError) as err:
        mnist.load_data()
    assert str(err.value).count("checksum mismatch") == 1 + len(mnist.IDX_MIRRORS)
    assert cache_files() == []


def test_truncated_npz_download_is_rejected(isolated, monkeypatch, sample):
    body = npz_bytes(sample)
    monkeypatch.setattr(mnist, "NPZ_SHA256", hashlib.sha256(body).hexdigest())
    isolated.files = {mnist.NPZ_URL: body[:len(body) // 2]}
    with pytest.raises(mnist.DataNotFoundError, match="checksum mismatch"):
        mnist.load_data()
    assert cache_files() == []


@pytest.mark.mnist
def test_truncated_idx_download_caches_nothing(isolated):
    # Three good files and a truncated one from every mirror: none of the four may be kept.
    files = {}
    for mirror in mnist.IDX_MIRRORS:
        for name in IDX_NAMES:
            body = real_gz(name)
            files[mirror + name + ".gz"] = body[:len(body) // 2] if "labels" in name else body
    isolated.files = files
    with pytest.raises(mnist.DataNotFoundError, match="gzip"):
        mnist.load_data()
    assert cache_files() == []


def test_download_time_limit(isolated):
    class Slow:
        """A response trickling 1 kB every 20 ms; it ends after 2 s, so a missing time limit
        fails the test rather than hanging it."""

        def __init__(self):
            self.reads = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size=-1):
            self.reads += 1
            time.sleep(0.02)
            return b"x" * 1000 if self.reads <= 100 else b""

    urls = [mnist.NPZ_URL] + [m + n + ".gz" for m in mnist.IDX_MIRRORS for n in IDX_NAMES]
    isolated.files = {url: Slow for url in urls}
    start = time.monotonic()
    with pytest.raises(mnist.DataNotFoundError, match="time allowed"):
        mnist.load_data(timeout=0.2)
    assert time.monotonic() - start < 2.0
    assert cache_files() == []


# ---------------------------------------------------------------- nothing there
def test_offline_error_says_where_to_put_the_files(tmp_path, monkeypatch, isolated):
    with pytest.raises(mnist.DataNotFoundError) as err:
        mnist.load_data(download=False)
    assert isinstance(err.value, FileNotFoundError)
    message = str(err.value)
    for text in ("FASTNN_DATA_DIR", cache(), "mnist.npz", "load_sample()", "download=False",
                 *(name + ".gz" for name in IDX_NAMES)):
        assert text in message
    assert isolated.calls == []  # download=False never touches the network

    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(mnist.DataNotFoundError) as err:
        mnist.load_data()  # the fake network is down: every source fails
    assert str(tmp_path) in str(err.value)
    assert mnist.NPZ_URL in str(err.value) and "no route to host" in str(err.value)
    assert len(isolated.calls) == 1 + len(mnist.IDX_MIRRORS)  # one failed request per source
    assert cache_files() == []


def test_load_data_or_sample_falls_back_offline(isolated, sample):
    data, source = mnist.load_data_or_sample()
    assert source == "sample"
    assert_same_data(data, sample)
    assert isolated.calls and all(t <= 15 for _, t in isolated.calls)


@pytest.mark.mnist
def test_load_data_or_sample_full(monkeypatch, isolated):
    monkeypatch.setenv("FASTNN_DATA_DIR", DATA_DIR)
    data, source = mnist.load_data_or_sample()
    assert source == "full"
    assert_keras_form(data, 60000, 10000)
    assert isolated.calls == []


# ---------------------------------------------------------------- damaged local files
def test_truncated_local_gz_is_a_value_error_naming_the_file(tmp_path, monkeypatch, sample):
    write_idx_set(tmp_path, sample)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    body = path.read_bytes()
    path.write_bytes(body[:len(body) // 2])
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="truncated") as err:
        mnist.load_data(download=False)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError):  # a damaged file is reported, not replaced by the sample
        mnist.load_data_or_sample()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "header says"),             # one byte short of what the header promises
    (lambda b: b + b"\0", "header says"),          # one byte too many
    (lambda b: b"\0\0\x08\x03" + b[4:], "magic"),  # labels file with the images magic number
])
def test_bad_idx_header(tmp_path, monkeypatch, sample, damage, message):
    write_idx_set(tmp_path, sample, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=message) as err:
        mnist.load_data(download=False)
    assert str(path) in str(err.value)


def test_corrupt_local_npz(tmp_path, monkeypatch):
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip file")
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="mnist.npz"):
        mnist.load_data(download=False)
