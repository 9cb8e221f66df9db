"""MNIST handwritten digits, returned the way `keras.datasets.mnist.load_data()` returns them.

`load_data()` looks, in this order, in:
1. the folder named by $FASTNN_DATA_DIR,
2. the cache folder $FASTNN_HOME/datasets (default ~/.fastnn/datasets),
for Keras's `mnist.npz` or the four IDX files (gzipped or not), and otherwise
3. downloads into the cache: Keras's mnist.npz, else the IDX files from the mirrors torchvision
   uses. A download is checked against a pinned SHA-256 before it is moved into the cache.
Whatever the source, the data must be MNIST itself: 60000 + 10000 uint8 28x28 images, labels
0-9, and the SHA-256 of each array's IDX form equal to the canonical one (a Keras mnist.npz whose
file hash is Keras's pin passes at once). A cached copy is re-checked on every load, as Keras's
get_file does (a file already checked in this process, unchanged since - same inode, size,
mtime and ctime - is not hashed again); a damaged or different cached copy is downloaded again
when download=True, else reported. A file in $FASTNN_DATA_DIR that is not MNIST is reported,
naming it.
`load_sample()` returns the small subset bundled with fastnn; it needs no files and no network.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, under CC BY-SA 3.0.
"""
import gzip
import hashlib
import http.client
import importlib.resources
import os
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from contextlib import nullcontext
from urllib.request import urlopen

import numpy as np

NPZ_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
# Keras pins this (file_hash in keras/src/datasets/mnist.py).
NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

IDX_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
               "http://yann.lecun.com/exdb/mnist/")
# SHA-256 of the *uncompressed* IDX files, in the order train images, train labels, test images,
# test labels. Checking the content rather than the .gz bytes accepts any faithful gzip of the
# canonical data; torchvision pins the mirrors' .gz bytes by MD5 instead (f68b3c2d..., d53e105e...,
# 9fb629c4..., ec29112d...), and those mirror files decompress to exactly these contents.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SAMPLE_FILE = "mnist_sample.npz"
# Without a total time limit (timeout=None) a download still gives up after this many seconds of
# network silence, so a dead connection never hangs forever.
SOCKET_TIMEOUT = 30.0


class DataNotFoundError(FileNotFoundError):
    """MNIST is not on this machine and could not be downloaded."""


class NotMNISTError(ValueError):
    """A local file is readable but does not hold the MNIST data set."""


SHAPES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
          "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}
_NPZ_KEYS = dict(zip(("x_train", "y_train", "x_test", "y_test"), SHAPES))
# Files whose content was verified in this process: (path, dev, inode, size, mtime, ctime).
_verified = set()


def _file_key(path, st):
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def cache_dir():
    """Where downloads go and are looked for: $FASTNN_HOME/datasets, default ~/.fastnn/datasets."""
    home = os.environ.get("FASTNN_HOME") or os.path.join("~", ".fastnn")
    return os.path.join(os.path.expanduser(home), "datasets")


def load_data(path="mnist.npz", download=True, timeout=None):
    """The full MNIST set, like `keras.datasets.mnist.load_data()`.

    Raises `DataNotFoundError` (a `FileNotFoundError`) when there is no local copy and no download
    worked, and `ValueError` when a local file is corrupt or truncated.

    Args:
        path: File name of the .npz form, looked for in `$FASTNN_DATA_DIR` and in the cache, and the
            name a downloaded copy is cached under (an absolute path is used as it is). Defaults to
            `"mnist.npz"`.
        download: Whether to download the data when no local copy is found. Defaults to `True`.
        timeout: Seconds each download source may take in all; `None`: no limit.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: uint8 arrays of shapes (60000, 28, 28), (60000,),
        (10000, 28, 28), (10000,).

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = fastnn.datasets.mnist.load_data()
    ```
    """
    data_dir = os.environ.get("FASTNN_DATA_DIR")
    cache = cache_dir()
    errors = []
    if data_dir:
        data = _load_folder(os.path.expanduser(data_dir), path)
        if data is not None:
            return data
    try:
        data = _load_folder(cache, path)
    except ValueError as exc:     # damaged, or not MNIST: Keras's get_file downloads it again
        outside = os.path.dirname(os.path.abspath(os.path.join(cache, path))) != \
            os.path.abspath(cache)
        if outside:           # an absolute `path` of the user's: reported, never removed
            raise
        if not download:
            raise ValueError(f"{exc}\nThis is fastnn's download cache: delete the file, or call "
                             "load_data(download=True) to download MNIST again.") from None
        removed = _remove_cached(cache, path)
        errors.append(f"the cached copy was damaged or not MNIST ({exc}); removed "
                      f"{', '.join(removed)}")
        data = None
    if data is not None:
        return data
    if not download:
        errors.append("not attempted (download=False)")
    elif _download(cache, path, timeout, errors):
        return _load_folder(cache, path)
    raise DataNotFoundError(_not_found_message(data_dir, cache, path, errors))


def _remove_cached(cache, npz_name):
    """Remove the form of the data set _load_folder read from the cache (it failed its checks)."""
    npz = os.path.join(cache, npz_name)
    paths = [npz] if os.path.isfile(npz) else [
        os.path.join(cache, name + ext) for name in IDX_SHA256 for ext in (".gz", "")]
    removed = []
    for p in paths:
        try:
            os.remove(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def load_sample():
    """The sample bundled with fastnn, in the form `load_data()` returns: the first 4,000 training
    and the first 1,000 test digits of MNIST (see MNIST_SAMPLE_LICENSE.txt beside this module)."""
    with importlib.resources.files(__package__).joinpath(SAMPLE_FILE).open("rb") as f:
        return _load_npz(f, SAMPLE_FILE, canonical=False)


def load_data_or_sample(download=True, timeout=15.0):
    """`(data, source)`: `(load_data(), "full")` when the full set is here or can be downloaded
    within `timeout` seconds per source, else `(load_sample(), "sample")`. A corrupt local file
    still raises: it is something to fix, not a reason to train on less data.

    Args:
        download: Whether to try downloading the full set. Defaults to `True`.
        timeout: Seconds each download source may take. Defaults to `15.0`.

    Returns:
        A pair `(data, source)`, `source` being `"full"` or `"sample"`.
    """
    try:
        return load_data(download=download, timeout=timeout), "full"
    except DataNotFoundError:
        return load_sample(), "sample"


# ---------------------------------------------------------------- reading local files
def _load_folder(folder, npz_name="mnist.npz"):
    """The data set from `folder` (the .npz, else the four IDX files), or None if not there."""
    npz = os.path.join(folder, npz_name)
    if os.path.isfile(npz):
        return _load_npz(npz, npz)
    paths = {}
    for name in IDX_SHA256:
        found = [p for p in (os.path.join(folder, name + ".gz"), os.path.join(folder, name))
                 if os.path.isfile(p)]
        if not found:
            return None
        paths[name] = found[0]
    arrays, verify = [], []
    for name, p in paths.items():
        array, raw, key = _read_idx(p, 3 if "images" in name else 1)
        arrays.append(array)
        verify.append((name, p, raw, key))
    data = _checked(*arrays, folder)
    for (name, p, raw, key), array in zip(verify, arrays):
        _check_mnist(name, array, p)
        if key not in _verified:
            _check_digest(name, hashlib.sha256(raw).hexdigest(), p)
    _verified.update(key for _, _, _, key in verify)
    return data


def _load_npz(file, name, canonical=True):
    """The arrays of a .npz file; with `canonical`, checked to be MNIST's (a file whose SHA-256 is
    Keras's pin at once, any other array by array)."""
    key = trusted = None
    try:
        with (open(file, "rb") if canonical else nullcontext(file)) as fh:
            if canonical:
                key = _file_key(name, os.fstat(fh.fileno()))
                trusted = key in _verified or _sha256_file(fh) == NPZ_SHA256
                fh.seek(0)
            with np.load(fh, allow_pickle=False) as f:
                arrays = [f[k] for k in _NPZ_KEYS]
    except (KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{name}: not a readable MNIST .npz file ({exc})") from exc
    data = _checked(*arrays, name)
    if canonical and not trusted:
        for (k, idx_name), array in zip(_NPZ_KEYS.items(), arrays):
            _check_mnist(idx_name, array, f"{name} ({k})")
            digest = hashlib.sha256(_idx_header(array))
            digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
            _check_digest(idx_name, digest.hexdigest(), f"{name} ({k})")
    if canonical:
        _verified.add(key)
    return data


def _sha256_file(f):
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _idx_header(array):
    return struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)


def _check_mnist(name, array, source):
    """Shape and label range of MNIST's `name` array (cheap checks with clear messages)."""
    if array.shape != SHAPES[name]:
        raise NotMNISTError(f"{source}: not the MNIST data set: {name} has shape {array.shape}, "
                            f"MNIST's is {SHAPES[name]}")
    if "labels" in name and array.size and array.max() > 9:
        raise NotMNISTError(f"{source}: not the MNIST data set: label {int(array.max())} "
                            "outside 0-9")


def _check_digest(name, digest, source):
    if digest != IDX_SHA256[name]:
        raise NotMNISTError(f"{source}: not the MNIST data set: the content of {name} has "
                            f"SHA-256 {digest}, MNIST's is {IDX_SHA256[name]} (a modified or "
                            "different data set)")


def _read_idx(path, ndim):
    """(array, raw bytes, file key) of an IDX file of uint8 data with `ndim` dimensions (magic
    2051 images, 2049 labels)."""
    try:
        with open(path, "rb") as fh:
            key = _file_key(path, os.fstat(fh.fileno()))
            if path.endswith(".gz"):
                with gzip.GzipFile(fileobj=fh) as f:
                    raw = f.read()
            else:
                raw = fh.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != 0x800 + ndim:
        raise ValueError(f"{path}: not an IDX file of {ndim}-d uint8 data "
                         f"(expected magic number {0x800 + ndim})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, i.e. {int(np.prod(shape))} bytes of "
                         f"data, but the file has {len(raw) - header} (truncated or corrupt)")
    # frombuffer views the immutable bytes: copy for a writable array.
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy(), raw, key


def _checked(x_train, y_train, x_test, y_test, source):
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if (x.dtype != np.uint8 or y.dtype != np.uint8 or x.ndim != 3
                or x.shape[1:] != (28, 28) or y.shape != x.shape[:1]):
            raise ValueError(f"{source}: expected uint8 images (n, 28, 28) and n uint8 labels, "
                             f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}")
    x_train, y_train, x_test, y_test = map(np.ascontiguousarray,
                                           (x_train, y_train, x_test, y_test))
    return (x_train, y_train), (x_test, y_test)


# ---------------------------------------------------------------- downloading
def _download(cache, npz_name, timeout, errors):
    """Download MNIST into `cache` from the first source that works: Keras's .npz, then the IDX
    files from each mirror. Returns True on success; appends each failure's reason to `errors`."""
    sources = [[(NPZ_URL, npz_name, NPZ_SHA256, False)]] + [
        [(mirror + name + ".gz", name + ".gz", sha256, True)
         for name, sha256 in IDX_SHA256.items()]
        for mirror in IDX_MIRRORS]
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as exc:
        errors.append(f"cannot create the cache folder ({exc})")
        return False
    for files in sources:
        deadline = None if timeout is None else time.monotonic() + timeout
        error = _download_source(files, cache, deadline)
        if error is None:
            return True
        errors.append(error)
    return False


def _download_source(files, cache, deadline):
    """Fetch one source's files into temp files in `cache`, verify them all, and only then move
    them into place: the cache never holds a partial, corrupt or truncated download.
    Returns None on success, else why it failed."""
    temps = []
    try:
        for url, name, sha256, gzipped in files:
            print(f"Downloading {url}", file=sys.stderr)
            dest = os.path.join(cache, name)
            try:
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest),
                                           prefix=f".{os.path.basename(dest)}.", suffix=".part")
                temps.append(tmp)
                with os.fdopen(fd, "wb") as out:
                    _fetch(url, out, deadline)
                _verify(tmp, sha256, gzipped)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                return f"{url}: {exc}"
        for tmp, (_, name, _, _) in zip(temps, files):
            os.replace(tmp, os.path.join(cache, name))
        return None
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def _fetch(url, out, deadline):
    """Stream `url` into the open file `out`, giving up at `deadline` (a time.monotonic() value,
    or None for no total limit)."""
    seconds = SOCKET_TIMEOUT
    if deadline is not None:
        seconds = min(seconds, deadline - time.monotonic())
    if seconds <= 0:
        raise TimeoutError("no time left for this source")
    with urlopen(url, timeout=seconds) as response:
        while chunk := response.read(1 << 16):
            out.write(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("download did not finish within the time allowed")


def _verify(path, sha256, gzipped):
    """Raise ValueError unless the file (decompressed, if `gzipped`) has the SHA-256 `sha256`."""
    digest = hashlib.sha256()
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"incomplete or corrupt gzip data ({exc})") from exc
    if digest.hexdigest() != sha256:
        raise ValueError(f"checksum mismatch: SHA-256 {digest.hexdigest()}, expected {sha256}")


def _not_found_message(data_dir, cache, npz_name, errors):
    idx_names = ", ".join(name + ".gz" for name in IDX_SHA256)
    where = (f"the folder named by $FASTNN_DATA_DIR (now {data_dir})" if data_dir
             else "a folder named by $FASTNN_DATA_DIR (not set)")
    return (f"MNIST not found. Put Keras's {npz_name}, or the four IDX files {idx_names} "
            f"(gzipped or not), in {where} or in the cache folder {cache}.\n"
            f"Download: {'; '.join(errors)}\n"
            "The small sample bundled with fastnn needs neither files nor network: "
            "fastnn.datasets.mnist.load_sample().")
