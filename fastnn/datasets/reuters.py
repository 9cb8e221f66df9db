"""Reuters newswire topics, as `keras.datasets.reuters.load_data()` returns them: 11,228 wires as
word ids over 46 topics, from Keras's reuters.npz, whose object arrays of id lists are read
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

URL = KERAS_ORIGIN + "reuters.npz"
FILE_HASH = "d6586e694ee56d7a4e65172e12b3e987c03096cb01eab99753921ef915959916"   # Keras's pin
WORD_INDEX_URL = KERAS_ORIGIN + "reuters_word_index.json"
WORD_INDEX_HASH = "4d44cc38712099c9e383dc6e5f11a921"                            # Keras's (MD5)
LABEL_NAMES = (
    "cocoa", "grain", "veg-oil", "earn", "acq", "wheat", "copper", "housing", "money-supply",
    "coffee", "sugar", "trade", "reserves", "ship", "cotton", "carcass", "crude", "nat-gas",
    "cpi", "money-fx", "interest", "gnp", "meal-feed", "alum", "oilseed", "gold", "tin",
    "strategic-metal", "livestock", "retail", "ipi", "iron-steel", "rubber", "heat", "jobs",
    "lei", "bop", "zinc", "orange", "pet-chem", "dlr", "gas", "silver", "wpi", "hog", "lead")


def load_data(path="reuters.npz", num_words=None, skip_top=0, maxlen=None, test_split=0.2,
              seed=113, start_char=1, oov_char=2, index_from=3):
    """`(x_train, y_train), (x_test, y_test)`: object arrays of word-id lists and int topic
    labels (see get_label_names), shuffled by `np.random.RandomState(seed)`, the last
    `test_split` of the wires kept after `maxlen` the test set.

    The word-id arguments mean what they mean for `imdb.load_data`. `path` is the file's name
    in Keras's cache folder.

    Args:
        path: Name of the cached file (under Keras's cache, `~/.keras/datasets`). Defaults to
            `"reuters.npz"`.
        num_words: Keep only the `num_words` most frequent words (others become `oov_char`); `None`:
            all.
        skip_top: Skip that many of the most frequent words (they become `oov_char`). Defaults to
            `0`.
        maxlen: Drop sequences longer than this; `None`: keep all.
        test_split: Fraction of the data kept as the test set. Defaults to `0.2`.
        seed: Seed of the shuffle before the split. Defaults to `113`.
        start_char: The id marking the start of each sequence. Defaults to `1`.
        oov_char: The id replacing words left out by `num_words` or `skip_top`. Defaults to `2`.
        index_from: Word ids start at this offset (ranks shifted by it). Defaults to `3`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, NumPy arrays.
    """
    arrays = load_npz(get_file(path, origin=URL, file_hash=FILE_HASH))
    xs, labels = arrays["x"], arrays["y"]
    order = shuffled_indices(np.random.RandomState(seed), len(xs))
    xs, labels = drop_long(maxlen, offset_ids(xs[order], start_char, index_from), labels[order])
    xs = limit_words(xs, num_words, skip_top, oov_char)
    n = int(len(xs) * (1 - test_split))
    return ((np.array(xs[:n], dtype=object), np.array(labels[:n])),
            (np.array(xs[n:], dtype=object), np.array(labels[n:])))


def get_word_index(path="reuters_word_index.json"):
    """The dict word -> rank (1 = most frequent); a wire's id i is the word of rank
    i - index_from.

    Args:
        path: Name of the cached file. Defaults to `"reuters_word_index.json"`.

    Returns:
        A dict `{word: rank}`.
    """
    return word_index(path, WORD_INDEX_URL, WORD_INDEX_HASH)


def get_label_names():
    """The 46 topic names, indexed by label."""
    return LABEL_NAMES
