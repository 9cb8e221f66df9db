"""fastnn.datasets' Keras-format loaders (fashion_mnist, cifar10, cifar100, imdb, reuters,
boston_housing, california_housing): small files written here in the real formats are placed
where get_file looks (a temporary KERAS_HOME) and every loader must return exactly what Keras's
own loader returns on the same files. No test touches the network: fastnn.downloads.urlopen and
Keras's urlretrieve are replaced by fakes that fail the test or serve local bytes.

fastnn checks the test files against their own hashes (its pinned constants are patched); Keras's
validate_file is given the same translation from its pins to the test files' hashes, so both
check, and both read the very same cached files."""
import gzip
import hashlib
import io
import json
import os
import pathlib
import pickle
import shutil
import struct
import tarfile
import zipfile
from urllib.error import URLError

import numpy as np
import pytest

from fastnn import downloads
from fastnn.datasets import (
    _common,
    boston_housing,
    california_housing,
    cifar10,
    cifar100,
    fashion_mnist,
    imdb,
    reuters,
)

LOADERS = {  # fastnn module -> the name of Keras's module under keras.src.datasets
    fashion_mnist: "fashion_mnist", cifar10: "cifar10", cifar100: "cifar100", imdb: "imdb",
    reuters: "reuters", boston_housing: "boston_housing",
    california_housing: "california_housing"}


class Offline:
    """Stands in for urlopen: serves `files[url]`, any other URL fails as offline; records."""

    def __init__(self):
        self.files, self.calls = {}, []

    def __call__(self, url, timeout=None):
        self.calls.append(url)
        if url not in self.files:
            raise URLError("network unreachable (test)")
        response = io.BytesIO(self.files[url])
        response.headers = {"Content-Length": str(len(self.files[url]))}
        return response


class Home(type(pathlib.Path())):
    """A path that also carries the fake network (`.net`)."""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary KERAS_HOME for fastnn (and for Keras, once `keras_datasets` is used); no
    network."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    net = Offline()
    monkeypatch.setattr(downloads, "urlopen", net)
    home = Home(tmp_path / "keras")
    home.net = net
    return home


@pytest.fixture
def pins(monkeypatch):
    """`pins(module, attr, path)`: pin fastnn's `module.attr` hash to the file at `path`, and
    make Keras's validate_file accept that file for the original pin (and nothing else)."""
    table = {}

    def pin(module, attr, path):
        digest = hashlib.new("md5" if len(getattr(module, attr)) == 32 else "sha256",
                             path.read_bytes()).hexdigest()
        table[getattr(module, attr)] = digest
        monkeypatch.setattr(module, attr, digest)
    return pin, table


@pytest.fixture
def keras_datasets(home, pins, monkeypatch):
    """Keras's dataset modules reading `home` (Keras reads KERAS_HOME once, at import), with no
    network and with `pins`' translation of its pinned hashes."""
    pytest.importorskip("keras")
    import importlib

    from keras.src.backend import config
    from keras.src.utils import file_utils
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"Keras tried to download {url}")
    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    validate = file_utils.validate_file
    table = pins[1]
    monkeypatch.setattr(file_utils, "validate_file", lambda fpath, file_hash, **kw: validate(
        fpath, table.get(file_hash, file_hash), **kw))
    return lambda name: importlib.import_module(f"keras.src.datasets.{name}")


def flat_types(obj):
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [type(obj).__name__] + [t for x in obj for t in flat_types(x)]
    return [type(obj).__name__]


def assert_same(ours, keras):
    """Same nesting, and arrays of the same shape, dtype and values (object arrays: the same
    nested lists with the same element types)."""
    assert type(ours) is type(keras)
    if isinstance(keras, tuple):
        assert len(ours) == len(keras)
        for a, b in zip(ours, keras):
            assert_same(a, b)
        return
    assert (ours.shape, ours.dtype) == (keras.shape, keras.dtype)
    if keras.dtype == object:
        assert ours.tolist() == keras.tolist()
        assert flat_types(ours.tolist()) == flat_types(keras.tolist())
    else:
        np.testing.assert_array_equal(ours, keras)


# ---------------------------------------------------------------- writing the real formats
def save_npz(path, py2=False, **arrays):
    """np.savez; with `py2`, object arrays pickled as Python 2 and NumPy 1 wrote them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, array in arrays.items():
            buf = io.BytesIO()
            if py2 and array.dtype == object:
                np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(
                    array))
                buf.write(py2_pickle(array))
            else:
                np.save(buf, array)
            z.writestr(name + ".npy", buf.getvalue())
    return path


def object_array(seqs):
    out = np.empty(len(seqs), dtype=object)
    out[:] = seqs
    return out


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did (how the CIFAR batches and Keras's .npz object arrays were
    written): bytes, and str as Python 2's byte strings, as STRING opcodes, which Python 3 reads
    back as bytes with encoding="bytes" and as str with the default "ASCII"; NumPy's
    reconstruction function named by its NumPy 1 module."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        data = obj.encode("ascii") if isinstance(obj, str) else obj
        n = len(data)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                    else pickle.BINSTRING + struct.pack("<i", n)) + data)
        self.memoize(obj)
    dispatch[bytes] = dispatch[str] = save_bytes

    def save_global(self, obj, name=None):
        if obj is _common._RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)
    dispatch[type(len)] = save_global


def py2_pickle(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_tar_gz(path, members):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def images(n, start):
    """n distinct uint8 images (n, 3072), a different value at every pixel and channel."""
    return ((np.arange(3072)[None, :] * 7 + np.arange(start, start + n)[:, None] * 131)
            % 251).astype(np.uint8)


def cifar10_archive(path, per_batch, rng):
    members, labels = {}, []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        y = rng.integers(0, 10, per_batch).tolist()
        labels.append(y)
        members[f"cifar-10-batches-py/{name}"] = py2_pickle({
            b"batch_label": f"batch {i}".encode(), b"labels": y,
            b"data": images(per_batch, i * per_batch),
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)]})
    members["cifar-10-batches-py/batches.meta"] = py2_pickle({b"label_names": [b"airplane"]})
    return write_tar_gz(path, members), labels


def idx_gz(array):
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


# ---------------------------------------------------------------- same origins, pins, folders
def test_urls_hashes_and_cache_folders_are_keras(monkeypatch, home):
    """Every get_file call (name, URL, hash, cache folder, extraction) equals Keras's."""
    pytest.importorskip("keras")
    import importlib

    from fastnn.datasets import cifar

    class Stop(Exception):
        pass

    calls = []

    def get_file(fname=None, origin=None, **kwargs):
        calls.append((fname, origin, kwargs.get("file_hash"),
                      kwargs.get("cache_subdir", "datasets"), bool(kwargs.get("extract"))))
        raise Stop
    for module in (_common, cifar, fashion_mnist, imdb, reuters, boston_housing,
                   california_housing):
        monkeypatch.setattr(module, "get_file", get_file)
    entry_points = [(m, "load_data") for m in LOADERS] + [(imdb, "get_word_index"),
                                                          (reuters, "get_word_index")]
    for module, fn in entry_points:
        kmod = importlib.import_module(f"keras.src.datasets.{LOADERS[module]}")
        monkeypatch.setattr(kmod, "get_file", get_file)
        found = []
        for f in (getattr(module, fn), getattr(kmod, fn)):
            calls.clear()
            with pytest.raises(Stop):
                f()
            found.append(list(calls))
        assert found[0] == found[1], (module.__name__, fn)
        assert found[0][0][1].startswith("https://")


# ---------------------------------------------------------------- each loader equals Keras's
def test_fashion_mnist(home, keras_datasets, rng):
    folder = home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (7, 28, 28)),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 7),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 3)}
    for name, array in arrays.items():
        (folder / name).write_bytes(idx_gz(array))
    ours = fashion_mnist.load_data()
    assert_same(ours, keras_datasets("fashion_mnist").load_data())
    (x, y), (xt, yt) = ours
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte.gz"])
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28) and yt.shape == (3,)
    assert home.net.calls == []


def test_fashion_mnist_truncated_file_is_named(home):
    folder = home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in fashion_mnist.FILES:
        shape = (2, 28, 28) if "images" in name else (2,)
        (folder / name).write_bytes(idx_gz(np.zeros(shape, np.uint8)))
    good = gzip.decompress((folder / fashion_mnist.FILES[1]).read_bytes())
    (folder / fashion_mnist.FILES[1]).write_bytes(gzip.compress(good[:-5]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: header says"):
        fashion_mnist.load_data()


@pytest.fixture(scope="module")
def cifar10_file(tmp_path_factory):
    """Keras's layout at full batch size (Keras's loader fills 10,000 rows per batch file)."""
    path = tmp_path_factory.mktemp("cifar10") / "archive.tar.gz"
    return cifar10_archive(path, 10000, np.random.default_rng(5))


def test_cifar10(home, keras_datasets, pins, cifar10_file, request):
    archive, labels = cifar10_file
    target = home / "datasets" / "cifar-10-batches-py-target_archive"
    target.parent.mkdir(parents=True)
    os.symlink(archive, target)
    # The extracted 184 MB are not left in pytest's kept temporary folders.
    request.addfinalizer(lambda: shutil.rmtree(target.parent / "cifar-10-batches-py-target",
                                               ignore_errors=True))
    pins[0](cifar10, "FILE_HASH", target)
    ours = cifar10.load_data()
    assert_same(ours, keras_datasets("cifar10").load_data())
    (x, y), (xt, yt) = ours
    assert x.shape == (50000, 32, 32, 3) and xt.shape == (10000, 32, 32, 3)
    assert y.shape == (50000, 1) and y.dtype == np.uint8 and yt.dtype == np.uint8
    assert y[:, 0].tolist() == sum(labels[:5], []) and yt[:, 0].tolist() == labels[5]
    # channels last: pixel (row 1, col 2) of image 10001 holds values 32 + 2, 1024 + .., 2048 + ..
    flat = images(1, 10001)[0]
    assert x[10001, 1, 2].tolist() == flat[[34, 1024 + 34, 2048 + 34]].tolist()


def test_cifar10_small_batches(home, pins, tmp_path):
    """Batches of any size are stacked in order (Keras needs 10,000 per training batch)."""
    target = home / "datasets" / "cifar-10-batches-py-target_archive"
    _, labels = cifar10_archive(target, 3, np.random.default_rng(1))
    pins[0](cifar10, "FILE_HASH", target)
    (x, y), (xt, yt) = cifar10.load_data()
    assert x.shape == (15, 32, 32, 3) and xt.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(x.transpose(0, 3, 1, 2).reshape(15, 3072), images(15, 0))
    np.testing.assert_array_equal(xt.transpose(0, 3, 1, 2).reshape(3, 3072), images(3, 15))
    assert y[:, 0].tolist() == sum(labels[:5], []) and yt[:, 0].tolist() == labels[5]
    assert (home / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py"
            / "test_batch").is_file()


def cifar100_archive(target, rng):
    members, expected = {}, {}
    for i, (name, n) in enumerate((("train", 12), ("test", 5))):
        fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
        expected[name] = (images(n, 100 * i), fine, coarse)
        members[f"cifar-100-python/{name}"] = py2_pickle({
            b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
            b"fine_labels": fine, b"coarse_labels": coarse, b"data": images(n, 100 * i)})
    members["cifar-100-python/meta"] = py2_pickle({b"fine_label_names": [b"apple"]})
    write_tar_gz(target, members)
    return expected


@pytest.mark.parametrize("label_mode", ["fine", "coarse"])
def test_cifar100(home, keras_datasets, pins, rng, label_mode):
    target = home / "datasets" / "cifar-100-python-target_archive"
    expected = cifar100_archive(target, rng)
    pins[0](cifar100, "FILE_HASH", target)
    ours = cifar100.load_data(label_mode)
    assert_same(ours, keras_datasets("cifar100").load_data(label_mode))
    (x, y), (xt, yt) = ours
    k = 1 if label_mode == "fine" else 2
    assert y[:, 0].tolist() == expected["train"][k] and yt[:, 0].tolist() == expected["test"][k]
    assert y.dtype == np.int64 and x.dtype == np.uint8 and x.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(xt.transpose(0, 3, 1, 2).reshape(5, 3072), expected["test"][0])


def test_cifar100_label_mode_checked(home):
    with pytest.raises(ValueError, match="label_mode"):
        cifar100.load_data("medium")
    assert home.net.calls == []


def sequences(rng, n, high):
    return object_array([rng.integers(1, high, rng.integers(1, 30)).tolist() for _ in range(n)])


@pytest.fixture(params=["py3", "py2"])
def imdb_file(home, pins, request):
    rng = np.random.default_rng(3)
    path = save_npz(home / "datasets" / "imdb.npz", py2=request.param == "py2",
                    x_train=sequences(rng, 40, 60), y_train=rng.integers(0, 2, 40),
                    x_test=sequences(rng, 30, 60), y_test=rng.integers(0, 2, 30))
    pins[0](imdb, "FILE_HASH", path)
    return path


# Every argument that changes the output, alone and combined.
TEXT_ARGS = [{}, {"num_words": 20}, {"skip_top": 5}, {"num_words": 25, "skip_top": 4},
             {"maxlen": 15}, {"maxlen": 12, "num_words": 30, "skip_top": 2},
             {"index_from": 0}, {"index_from": 7}, {"start_char": None},
             {"start_char": None, "index_from": 0}, {"start_char": 5, "oov_char": 9},
             {"oov_char": None}, {"oov_char": None, "num_words": 20, "skip_top": 3},
             {"seed": 0}, {"seed": 7, "maxlen": 10}, {"seed": 2 ** 31 - 1}]


@pytest.mark.parametrize("kwargs", TEXT_ARGS, ids=str)
def test_imdb(imdb_file, keras_datasets, kwargs):
    ours = imdb.load_data(**kwargs)
    assert_same(ours, keras_datasets("imdb").load_data(**kwargs))
    assert ours[0][0].dtype == object and len(ours[0][0]) == len(ours[0][1])


def test_imdb_values(imdb_file):
    """The arguments' meaning, checked on the file itself (without Keras)."""
    with np.load(imdb_file, allow_pickle=True) as f:        # our own test file
        x_train, y_train, x_test = f["x_train"], f["y_train"], f["x_test"]
    order = np.arange(40)
    np.random.RandomState(113).shuffle(order)
    (x, y), _ = imdb.load_data()
    top = max(max(s) for s in list(x_train) + list(x_test)) + 3
    first = x_train[order[0]]
    assert x[0] == [1] + [w + 3 if w + 3 < top else 2 for w in first]
    np.testing.assert_array_equal(y, y_train[order])
    (x, _), _ = imdb.load_data(num_words=20, skip_top=5, oov_char=None, start_char=None,
                               index_from=0)
    assert x[0] == [w for w in first if 5 <= w < 20]
    (x, _), (xt, _) = imdb.load_data(maxlen=10)
    assert all(len(s) < 10 for s in list(x) + list(xt)) and 0 < len(x) < 40
    assert imdb.load_data(seed=1)[0][0].tolist() != imdb.load_data()[0][0].tolist()


def test_imdb_maxlen_keeping_nothing(imdb_file, keras_datasets):
    for load in (imdb.load_data, keras_datasets("imdb").load_data):
        with pytest.raises(ValueError, match="no sequence was kept"):
            load(maxlen=2)


@pytest.fixture(params=["py3", "py2"])
def reuters_file(home, pins, request):
    rng = np.random.default_rng(4)
    path = save_npz(home / "datasets" / "reuters.npz", py2=request.param == "py2",
                    x=sequences(rng, 50, 80), y=rng.integers(0, 46, 50))
    pins[0](reuters, "FILE_HASH", path)
    return path


@pytest.mark.parametrize("kwargs", TEXT_ARGS + [
    {"test_split": 0.3}, {"test_split": 0.25}, {"test_split": 0.5, "maxlen": 12},
    {"test_split": 0.0}, {"test_split": 0.0, "maxlen": 20}], ids=str)
def test_reuters(reuters_file, keras_datasets, kwargs):
    assert_same(reuters.load_data(**kwargs), keras_datasets("reuters").load_data(**kwargs))


def test_reuters_values(reuters_file):
    (x, y), (xt, yt) = reuters.load_data(test_split=0.3)
    assert (len(x), len(xt)) == (35, 15) and y.dtype == np.int64
    assert len(reuters.load_data(test_split=0.25)[0][0]) == 37     # int(37.5): rounded down
    assert all(s[0] == 1 for s in x)
    assert reuters.get_label_names() == keras_label_names()


def keras_label_names():
    return ("cocoa", "grain", "veg-oil", "earn", "acq", "wheat", "copper", "housing",
            "money-supply", "coffee", "sugar", "trade", "reserves", "ship", "cotton",
            "carcass", "crude", "nat-gas", "cpi", "money-fx", "interest", "gnp", "meal-feed",
            "alum", "oilseed", "gold", "tin", "strategic-metal", "livestock", "retail", "ipi",
            "iron-steel", "rubber", "heat", "jobs", "lei", "bop", "zinc", "orange", "pet-chem",
            "dlr", "gas", "silver", "wpi", "hog", "lead")


def test_reuters_label_names_are_keras(keras_datasets):
    assert reuters.get_label_names() == keras_datasets("reuters").get_label_names()


@pytest.mark.parametrize("module", [imdb, reuters])
def test_word_index(home, keras_datasets, pins, module):
    name = f"{module.__name__.rsplit('.', 1)[1]}_word_index.json"
    path = home / "datasets" / name
    path.parent.mkdir(parents=True)
    index = {"the": 1, "and": 2, "café": 3}
    path.write_text(json.dumps(index), encoding="utf8")
    pins[0](module, "WORD_INDEX_HASH", path)
    assert module.get_word_index() == index == keras_datasets(
        module.__name__.rsplit(".", 1)[1]).get_word_index()


HOUSING_ARGS = [{}, {"test_split": 0.0}, {"test_split": 0.25}, {"test_split": 0.35}, {"seed": 0},
                {"seed": 1, "test_split": 0.5}]


@pytest.mark.parametrize("kwargs", HOUSING_ARGS, ids=str)
def test_boston_housing(home, keras_datasets, pins, kwargs):
    rng = np.random.default_rng(6)
    path = save_npz(home / "datasets" / "boston_housing.npz", x=rng.normal(size=(50, 13)),
                    y=rng.normal(size=50))
    pins[0](boston_housing, "FILE_HASH", path)
    ours = boston_housing.load_data(**kwargs)
    assert_same(ours, keras_datasets("boston_housing").load_data(**kwargs))
    split = kwargs.get("test_split", 0.2)
    assert len(ours[0][0]) == int(50 * (1 - split)) and ours[0][0].shape[1] == 13


@pytest.mark.parametrize("kwargs", [dict(k, version=v) for k in HOUSING_ARGS
                                    for v in ("large", "small")], ids=str)
def test_california_housing(home, keras_datasets, pins, kwargs):
    rng = np.random.default_rng(7)
    path = save_npz(home / "datasets" / "california_housing.npz",
                    x=rng.normal(size=(700, 8)).astype(np.float32),
                    y=rng.normal(size=700).astype(np.float32))
    pins[0](california_housing, "FILE_HASH", path)
    ours = california_housing.load_data(**kwargs)
    assert_same(ours, keras_datasets("california_housing").load_data(**kwargs))
    n = 600 if kwargs["version"] == "small" else 700
    assert len(ours[0][0]) + len(ours[1][0]) == n and ours[0][0].dtype == np.float32


@pytest.mark.parametrize("module", [boston_housing, california_housing])
@pytest.mark.parametrize("split", [1.0, -0.1])
def test_housing_bad_test_split(home, module, split):
    with pytest.raises(ValueError, match="Invalid `test_split`"):
        module.load_data(test_split=split)
    assert home.net.calls == []


def test_california_bad_version(home):
    with pytest.raises(ValueError, match="version"):
        california_housing.load_data(version="medium")


# ---------------------------------------------------------------- offline, hashes, safety
@pytest.mark.parametrize("load, url, target", [
    (imdb.load_data, imdb.URL, "imdb.npz"),
    (cifar10.load_data, cifar10.URL, "cifar-10-batches-py-target_archive"),
    (lambda: fashion_mnist.load_data(), fashion_mnist.KERAS_ORIGIN + fashion_mnist.FILES[0],
     os.path.join("fashion-mnist", fashion_mnist.FILES[0])),
    (reuters.get_word_index, reuters.WORD_INDEX_URL, "reuters_word_index.json")])
def test_offline_error_names_url_and_path(home, load, url, target):
    with pytest.raises(downloads.DownloadError) as info:
        load()
    message = str(info.value)
    assert url in message and str(home / "datasets" / target) in message
    assert home.net.calls == [url]


def test_wrong_hash_is_refused(home):
    """A cached file that is not the pinned one is downloaded again; a download with the wrong
    hash is refused and nothing of it is kept."""
    path = save_npz(home / "datasets" / "boston_housing.npz", x=np.zeros((5, 13)), y=np.zeros(5))
    before = path.read_bytes()
    home.net.files[boston_housing.URL] = b"not the data set"
    with pytest.raises(ValueError, match="hash does not match"):
        boston_housing.load_data()
    assert home.net.calls == [boston_housing.URL] and path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["boston_housing.npz"]


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_npy(marker):
    """A .npy file of an object array whose pickle would run a shell command."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False,
                                               "shape": (1,)})
    return buf.getvalue() + pickle.dumps(RunsCommand(marker), protocol=3)


def test_npz_with_forbidden_class_is_refused(home, pins, tmp_path):
    """Even a file whose hash matches the pin is refused, and nothing in it runs."""
    marker = tmp_path / "ran"
    path = home / "datasets" / "imdb.npz"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", malicious_npy(marker))
        for name, array in (("y_train", np.zeros(1, int)), ("x_test", object_array([[1]])),
                            ("y_test", np.zeros(1, int))):
            buf = io.BytesIO()
            np.save(buf, array)
            z.writestr(name + ".npy", buf.getvalue())
    pins[0](imdb, "FILE_HASH", path)
    with pytest.raises(_common.UnsafePickleError,
                       match=r"imdb.npz:x_train.npy: refusing to unpickle posix\.system"):
        imdb.load_data()
    assert not marker.exists()
    assert isinstance(_common.UnsafePickleError("x"), pickle.UnpicklingError)


def test_cifar_batch_with_forbidden_class_is_refused(home, pins, tmp_path):
    marker = tmp_path / "ran"
    target = home / "datasets" / "cifar-100-python-target_archive"
    bad = py2_pickle({b"data": RunsCommand(marker), b"fine_labels": []})
    write_tar_gz(target, {"cifar-100-python/train": bad, "cifar-100-python/test": bad})
    pins[0](cifar100, "FILE_HASH", target)
    with pytest.raises(_common.UnsafePickleError, match="posix.system"):
        cifar100.load_data()
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(np.array([1, 2]), protocol=5),            # numpy._core.numeric._frombuffer
    b"cbuiltins\neval\n(S'1+1'\ntR.",                     # any builtin callable
    b"cnumpy\nload\n(S'x'\ntR.",                          # numpy, but not array building
])
def test_restricted_unpickler_refuses_everything_else(payload):
    with pytest.raises(_common.UnsafePickleError, match="refusing"):
        _common.unpickle(io.BytesIO(payload), "test")


def test_restricted_unpickler_reads_arrays_and_plain_data():
    data = {b"a": [1, 2.5, "x", b"y", (None, True)], "arr": np.arange(6, dtype="<u2").reshape(2, 3),
            "obj": object_array([[1, 2], [3]])}
    for protocol in (3, 4):     # Python 3's protocol 2 pickles bytes through _codecs.encode
        out = _common.unpickle(io.BytesIO(pickle.dumps(data, protocol=protocol)), "test")
        assert out[b"a"] == data[b"a"] and out["obj"].tolist() == [[1, 2], [3]]
        assert out["arr"].dtype == np.dtype("<u2")
        np.testing.assert_array_equal(out["arr"], data["arr"])
    # Python 2's layout as in the CIFAR files: bytes keys, NumPy 1's module name.
    raw = py2_pickle({b"data": np.arange(4, dtype=np.uint8), b"labels": [3, 1]})
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    out = _common.unpickle(io.BytesIO(raw), "test", encoding="bytes")
    assert out[b"labels"] == [3, 1] and out[b"data"].tolist() == [0, 1, 2, 3]


def test_wrong_cached_hash_offline_says_so(home):
    path = save_npz(home / "datasets" / "reuters.npz", x=object_array([[1]]), y=np.zeros(1, int))
    with pytest.raises(downloads.DownloadError) as info:
        reuters.load_data()
    message = str(info.value)
    assert reuters.URL in message and str(path) in message and reuters.FILE_HASH in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message     # what is there now


def test_cifar_batch_of_the_wrong_form_is_named(home, pins):
    target = home / "datasets" / "cifar-100-python-target_archive"
    batch = py2_pickle({b"data": np.zeros((2, 3072), np.float32), b"fine_labels": [1, 2]})
    write_tar_gz(target, {"cifar-100-python/train": batch, "cifar-100-python/test": batch})
    pins[0](cifar100, "FILE_HASH", target)
    with pytest.raises(ValueError, match=r"cifar-100-python/train: not a CIFAR batch"):
        cifar100.load_data()


def test_npy_pickle_that_disagrees_with_its_header(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False,
                                               "shape": (3,)})
    buf.write(pickle.dumps(object_array([[1], [2]]), protocol=3))
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue())
    with pytest.raises(ValueError, match=r"x.npz:x.npy: the pickled data is not the object "
                                         r"array of shape \(3,\)"):
        _common.load_npz(path)
