"""IMDB movie reviews (sentiment), as `keras.datasets.imdb.load_data()` returns them: reviews as
word ids (1 = most frequent word), from Keras's imdb.npz, whose object arrays of id lists are read
through the restricted unpickler."""
import numpy as np

from ..downloads import get_file
from ._common import (
    KERAS_ORIGIN,
    drop_long,
    limit_words,
    load_npz,
    offset_ids,
    shuffled_indices,
    word_index,
)

URL = KERAS_ORIGIN + "imdb.npz"
FILE_HASH = "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f"   # Keras's pin
WORD_INDEX_URL = KERAS_ORIGIN + "imdb_word_index.json"
WORD_INDEX_HASH = "bfafd718b763782e994055a2d397834f"                            # Keras's (MD5)


def load_data(path="imdb.npz", num_words=None, skip_top=0, maxlen=None, seed=113,
              start_char=1, oov_char=2, index_from=3):
    """`(x_train, y_train), (x_test, y_test)`: object arrays of word-id lists and int labels
    (0 negative, 1 positive), each set shuffled by one `np.random.RandomState(seed)` (train,
    then test), as Keras returns them.

    Each review becomes `[start_char] + [id + index_from ...]` (no start mark when start_char
    is None); with `maxlen`, reviews of maxlen ids or more are dropped; ids below `skip_top` or
    not below `num_words` (default: the largest id present) become `oov_char`, or are removed
    when oov_char is None. `path` is the file's name in Keras's cache folder.

    Args:
        path: Name of the cached file (under Keras's cache, `~/.keras/datasets`). Defaults to
            `"imdb.npz"`.
        num_words: Keep only the `num_words` most frequent words (others become `oov_char`); `None`:
            all.
        skip_top: Skip that many of the most frequent words (they become `oov_char`). Defaults to
            `0`.
        maxlen: Drop sequences longer than this; `None`: keep all.
        seed: Seed of the shuffle before the split. Defaults to `113`.
        start_char: The id marking the start of each sequence. Defaults to `1`.
        oov_char: The id replacing words left out by `num_words` or `skip_top`. Defaults to `2`.
        index_from: Word ids start at this offset (ranks shifted by it). Defaults to `3`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, NumPy arrays.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = fastnn.datasets.imdb.load_data(num_words=20000)
    ```
    """
    arrays = load_npz(get_file(path, origin=URL, file_hash=FILE_HASH))
    rng = np.random.RandomState(seed)
    sets = []
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        order = shuffled_indices(rng, len(x))
        sets.append(drop_long(maxlen, offset_ids(x[order], start_char, index_from), y[order]))
    (x_train, y_train), (x_test, y_test) = sets
    if maxlen and (not x_train or not x_test):
        raise ValueError(f"After filtering for sequences shorter than maxlen={maxlen}, no "
                         "sequence was kept. Increase maxlen.")
    xs = limit_words(x_train + x_test, num_words, skip_top, oov_char)
    labels = np.concatenate([y_train, y_test])
    n = len(x_train)
    return ((np.array(xs[:n], dtype=object), labels[:n]),
            (np.array(xs[n:], dtype=object), labels[n:]))


def get_word_index(path="imdb_word_index.json"):
    """The dict word -> rank (1 = most frequent); a review's id i is the word of rank
    i - index_from.

    Args:
        path: Name of the cached file. Defaults to `"imdb_word_index.json"`.

    Returns:
        A dict `{word: rank}`.
    """
    return word_index(path, WORD_INDEX_URL, WORD_INDEX_HASH)
