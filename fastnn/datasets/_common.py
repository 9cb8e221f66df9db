"""What the Keras-format loaders share: the download (always `fastnn.downloads.get_file`, into
Keras's cache), a restricted unpickler for the pickled parts of CIFAR's batches and of .npz object
arrays, and the seeded shuffle Keras uses.

Pickles are never trusted, hash-checked or not: `RestrictedUnpickler` builds only what these
formats hold - dicts, lists, tuples, bytes, str, numbers (plain pickle opcodes, no classes) and
NumPy arrays through NumPy's own array reconstruction (`numpy.ndarray`, `numpy.dtype`,
`numpy.core.multiarray._reconstruct`) - and refuses every other class or function, before
anything of it is called, with an `UnsafePickleError`.
"""
import io
import json
import pickle
import zipfile

import numpy as np

from ..downloads import get_file

KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"

# NumPy's array reconstruction function, whatever module this NumPy keeps it in (numpy.core in
# NumPy 1, numpy._core in NumPy 2); files written by either name it by their module.
_RECONSTRUCT = np.ndarray.__reduce__(np.empty(0))[0]
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A data file's pickle names something other than plain data and NumPy arrays."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only NumPy's array reconstruction (see the module docstring)."""

    def __init__(self, file, source, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to unpickle {module}.{name}: this data file may only "
                "hold plain data and NumPy arrays; it is corrupt or malicious (refused before "
                "anything it names was called)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refusing a pickle persistent id ({pid!r})")


def unpickle(file, source, **kwargs):
    """The object pickled in the open binary `file`, through RestrictedUnpickler."""
    return RestrictedUnpickler(file, source, **kwargs).load()


def load_npz(path):
    """The arrays of a .npz file as a dict; object arrays (pickled) go through
    RestrictedUnpickler, every other array is read without pickle."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(".npy"):
                with archive.open(member) as f:
                    arrays[member[:-4]] = _read_npy(io.BytesIO(f.read()), f"{path}:{member}")
    return arrays


def _read_npy(f, source):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"{source}: unsupported .npy format version {version}")
    if not dtype.hasobject:
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    array = unpickle(f, source)
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
        raise ValueError(f"{source}: the pickled data is not the {dtype} array of shape {shape} "
                         "the .npy header announces")
    return array


def shuffled_indices(rng, n):
    """`np.arange(n)` shuffled by the RandomState `rng`, as Keras's loaders shuffle."""
    indices = np.arange(n)
    rng.shuffle(indices)
    return indices


def check_test_split(test_split):
    if not 0 <= test_split < 1:
        raise ValueError(f"Invalid `test_split` argument: {test_split}. It must be between 0 "
                         "and 1 (exclusive of 1).")


def split_features(path, test_split, seed, first=None):
    """The housing sets: `x`, `y` of a plain .npz (no pickle), the first `first` rows when given,
    shuffled by RandomState(seed) and split at int(n * (1 - test_split)), as Keras splits them."""
    with np.load(path, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    if first is not None:
        x, y = x[:first], y[:first]
    order = shuffled_indices(np.random.RandomState(seed), len(x))
    x, y = x[order], y[order]
    cut = int(len(x) * (1 - test_split))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


# ---------------------------------------------------------------- IMDB and Reuters word ids
def offset_ids(seqs, start_char, index_from):
    """Each sequence as a list: `[start_char]` (unless None) then every id plus `index_from`."""
    head = [] if start_char is None else [start_char]
    return [head + [w + index_from for w in x] for x in seqs]


def drop_long(maxlen, seqs, labels):
    """Keras's filter: when `maxlen` is set, keep the (lists of) sequences shorter than it and
    their labels (a list then); else both unchanged."""
    if not maxlen:
        return seqs, labels
    kept = [(x, y) for x, y in zip(seqs, labels) if len(x) < maxlen]
    return [x for x, _ in kept], [y for _, y in kept]


def limit_words(seqs, num_words, skip_top, oov_char):
    """Ids outside [skip_top, num_words) become `oov_char`, or are dropped when it is None.
    Without `num_words` the bound is the largest id present, itself excluded (Keras's rule)."""
    if not num_words:
        num_words = max(max(x, default=0) for x in seqs)
    if oov_char is None:
        return [[w for w in x if skip_top <= w < num_words] for x in seqs]
    return [[w if skip_top <= w < num_words else oov_char for w in x] for x in seqs]


def word_index(path, url, file_hash):
    """The word -> id dict of a JSON word index, downloaded into Keras's cache."""
    with open(get_file(path, origin=url, file_hash=file_hash), encoding="utf8") as f:
        return json.load(f)
