"""Keras 3's keras.utils.split_dataset and image_dataset_from_directory, over NumPy arrays and
fastnn.utils.PyDataset instead of tf.data.Dataset: split_dataset returns arrays in the structure
it was given (an array, a tuple or list of arrays, a dict of arrays), and
image_dataset_from_directory returns a PyDataset of (images float32, labels) batches that
fit / evaluate / predict take, with `.class_names` and `.file_paths` as in Keras."""
import os
import random

import numpy as np

from .data_adapters import PyDataset
from .images import RESIZE_INTERPOLATIONS, _data_format, img_to_array, load_img, resize

ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


# ---- split_dataset -------------------------------------------------------------------------------
def _flat_arrays(dataset):
    """(the arrays of dataset, a function rebuilding the structure from arrays)."""
    if isinstance(dataset, np.ndarray):
        return [dataset], lambda parts: parts[0]
    if isinstance(dataset, (tuple, list)) and dataset:
        return [np.asarray(a) for a in dataset], lambda parts: type(dataset)(parts)
    if isinstance(dataset, dict) and dataset:
        keys = list(dataset)
        return [np.asarray(dataset[k]) for k in keys], lambda parts: dict(zip(keys, parts))
    raise TypeError("The `dataset` argument must be a NumPy array, or a non-empty list/tuple "
                    "or dict of arrays (fastnn has no tf.data.Dataset). Received: "
                    f"dataset of type {type(dataset)}")


def _split_sizes(left_size, right_size, total):
    """Keras's _rescale_dataset_split_sizes: floats are fractions, ints counts."""
    def kind(size):
        return None if size is None else float if isinstance(size, float) else \
            int if isinstance(size, int) and not isinstance(size, bool) else "bad"
    lk, rk = kind(left_size), kind(right_size)
    if lk == "bad" and rk == "bad":
        raise TypeError("Invalid `left_size` and `right_size` Types. Expected: integer or "
                        f"float or None, Received: type(left_size)={type(left_size)} and "
                        f"type(right_size)={type(right_size)}")
    if lk == "bad":
        raise TypeError("Invalid `left_size` Type. Expected: int or float or None, Received: "
                        f"type(left_size)={type(left_size)}.")
    if rk == "bad":
        raise TypeError("Invalid `right_size` Type. Expected: int or float or None, Received: "
                        f"type(right_size)={type(right_size)}.")
    if left_size == 0 and right_size == 0:
        raise ValueError("Both `left_size` and `right_size` are zero. At least one of the "
                         "split sizes must be non-zero.")
    if lk is int and not 0 < left_size < total or lk is float and not 0 < left_size < 1:
        raise ValueError(f"`left_size` should be either a positive integer smaller than "
                         f"{total}, or a float within the range `[0, 1]`. Received: "
                         f"left_size={left_size}")
    if rk is int and not 0 < right_size < total or rk is float and not 0 < right_size < 1:
        raise ValueError(f"`right_size` should be either a positive integer and smaller than "
                         f"{total} or a float within the range `[0, 1]`. Received: "
                         f"right_size={right_size}")
    if lk is rk is float and left_size + right_size > 1:
        raise ValueError("The sum of `left_size` and `right_size` is greater than 1. It must "
                         "be less than or equal to 1.")
    left = round(left_size * total) if lk is float else left_size
    right = round(right_size * total) if rk is float else right_size
    if left is None:
        left = total - right
    elif right is None:
        right = total - left
    if left + right > total:
        raise ValueError(f"The sum of `left_size` and `right_size` should be smaller than the "
                         f"{total}. Received: left_size + right_size = {left + right}and "
                         f"total_length = {total}")
    for split, side in ((left, "left"), (right, "right")):
        if split == 0:
            raise ValueError(f"With `dataset` of length={total}, `left_size`={left_size} and "
                             f"`right_size`={right_size}.Resulting {side} side dataset split "
                             "will be empty. Adjust any of the aforementioned parameters")
    return int(left), int(right)


def split_dataset(dataset, left_size=None, right_size=None, shuffle=False, seed=None):
    """Split arrays (or a tuple / list / dict of arrays of one length) into a left and a right
    part along the first axis, as keras.utils.split_dataset: the left part is the first
    left_size samples, the right part the last right_size (floats: fractions of the data; one
    None: the rest). shuffle permutes the samples first (the same permutation as Keras's for
    the same seed). Returns (left, right) in the input's structure, as NumPy arrays (Keras
    returns tf.data.Datasets).

    Args:
        dataset: An array, or a tuple, list or dict of arrays of one length.
        left_size: Size of the left part: an int (samples) or a float (fraction); `None`: the rest.
        right_size: Size of the right part, likewise. Defaults to `None`.
        shuffle: Whether to shuffle the samples first. Defaults to `False`.
        seed: Seed of the shuffle. Defaults to `None`.

    Returns:
        A pair `(left, right)`.
    """
    arrays, rebuild = _flat_arrays(dataset)
    if left_size is None and right_size is None:
        raise ValueError("At least one of the `left_size` or `right_size` must be specified. "
                         "Received: left_size=None and right_size=None")
    total = len(arrays[0]) if arrays[0].ndim else 0
    for i, a in enumerate(arrays):
        if a.ndim == 0 or len(a) != total:
            raise ValueError(f"split_dataset: every array must have the same number of samples "
                             f"(first axis); array {i} has shape {a.shape}, array 0 "
                             f"{arrays[0].shape}")
    if total == 0:
        raise ValueError("split_dataset: the dataset is empty")
    order = list(range(total))
    if shuffle:
        random.Random(random.randint(0, int(1e6)) if seed is None else seed).shuffle(order)
    left, right = _split_sizes(left_size, right_size, total)
    order = np.asarray(order)
    return (rebuild([a[order[:left]] for a in arrays]),
            rebuild([a[order[total - right:]] for a in arrays]))


# ---- image_dataset_from_directory ----------------------------------------------------------------
def _index_directory(directory, labels, class_names, follow_links):
    """(file paths, labels or None, class names), in Keras's order: class folders sorted,
    files sorted within each (walked recursively)."""
    if labels == "inferred":
        subdirs = [d for d in sorted(os.listdir(directory))
                   if os.path.isdir(os.path.join(directory, d)) and not d.startswith(".")]
        if class_names is not None:
            if not set(class_names).issubset(subdirs):
                raise ValueError("The `class_names` passed did not match the names of the "
                                 "subdirectories of the target directory. Expected: "
                                 f"{subdirs} (or a subset of it), but received: "
                                 f"class_names={class_names}")
            subdirs = list(class_names)
    else:
        subdirs = [""]
        if class_names is not None:
            raise ValueError("When `labels=None` (no labels), argument `class_names` cannot "
                             "be specified." if labels is None else
                             "When argument `labels` is specified, argument `class_names` "
                             "cannot be specified (the `class_names` will be the sorted list "
                             "of labels).")
    paths, found = [], []
    for index, subdir in enumerate(subdirs):
        root_dir = os.path.join(directory, subdir)
        walk = os.walk(root_dir, followlinks=follow_links) if follow_links else \
            os.walk(root_dir)
        for root, _, files in sorted(walk, key=lambda entry: entry[0]):
            for name in sorted(files):
                if name.lower().endswith(ALLOWLIST_FORMATS):
                    paths.append(os.path.join(root, name))
                    found.append(index)
    if labels == "inferred":
        return paths, np.asarray(found, np.int32), subdirs
    if labels is None:
        return paths, None, None
    if len(labels) != len(paths):
        raise ValueError("Expected the lengths of `labels` to match the number of files in "
                         f"the target directory. len(labels) is {len(labels)} while we found "
                         f"{len(paths)} files in directory {directory}.")
    return paths, np.asarray(labels), [str(label) for label in sorted(set(labels))]


class ImageDataset(PyDataset):
    """The batches of image_dataset_from_directory: images (batch, height, width, channels)
    float32 in [0, 255] (channels first with data_format="channels_first"), loaded from their
    files batch by batch, and their labels. With shuffle, the samples are reshuffled at the
    end of every epoch (as tf.data's shuffle reshuffles each iteration)."""

    def __init__(self, paths, labels, label_mode, num_classes, batch_size, image_size,
                 color_mode, interpolation, crop_to_aspect_ratio, pad_to_aspect_ratio,
                 data_format, shuffle, seed, class_names):
        super().__init__()
        self.file_paths, self._labels = list(paths), labels
        self.label_mode, self.num_classes = label_mode, num_classes
        self.batch_size, self.image_size = batch_size, tuple(image_size)
        self.color_mode, self.interpolation = color_mode, interpolation
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.pad_to_aspect_ratio = pad_to_aspect_ratio
        self.data_format, self.class_names = data_format, class_names
        self.shuffle = shuffle
        self._rng = np.random.RandomState(seed)
        self._order = np.arange(len(self.file_paths))

    def __len__(self):
        return -(-len(self.file_paths) // self.batch_size)

    def _image(self, path):
        x = img_to_array(load_img(path, color_mode=self.color_mode),
                         data_format="channels_last")
        return resize(x, self.image_size, interpolation=self.interpolation,
                      crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                      pad_to_aspect_ratio=self.pad_to_aspect_ratio,
                      data_format="channels_last")

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        images = np.stack([self._image(self.file_paths[i]) for i in rows]).astype(np.float32)
        if self.data_format == "channels_first":
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if self._labels is None:
            return images
        labels = self._labels[rows]
        if self.label_mode == "int":
            labels = labels.astype(np.int32)
        elif self.label_mode == "binary":
            labels = labels.astype(np.float32).reshape(-1, 1)
        else:       # categorical
            labels = np.eye(self.num_classes, dtype=np.float32)[labels]
        return images, labels

    def on_epoch_end(self):
        if self.shuffle:
            self._rng.shuffle(self._order)


def image_dataset_from_directory(directory, labels="inferred", label_mode="int",
                                 class_names=None, color_mode="rgb", batch_size=32,
                                 image_size=(256, 256), shuffle=True, seed=None,
                                 validation_split=None, subset=None, interpolation="bilinear",
                                 follow_links=False, crop_to_aspect_ratio=False,
                                 pad_to_aspect_ratio=False, data_format=None, verbose=True):
    """keras.utils.image_dataset_from_directory: the images in `directory` (one subfolder per
    class with labels="inferred") as a PyDataset of (images, labels) batches; a list of two
    with subset="both". Needs Pillow (pip install "fastnn[image]"). Interpolation: "bilinear"
    or "nearest" (fastnn's resize).

    Args:
        directory: The folder holding the images (one subfolder per class with `labels="inferred"`).
        labels: `"inferred"` (from the subfolder names), a list of integer labels in the sorted
            order of the files, or `None` (images only). Defaults to `"inferred"`.
        label_mode: `"int"`, `"categorical"` (one-hot), `"binary"` (float 0/1), or `None` (no
            labels). Defaults to `"int"`.
        class_names: The subfolder names to use, in the order of their labels (with
            `labels="inferred"`); `None`: all, sorted.
        color_mode: `"rgb"`, `"rgba"` or `"grayscale"`. Defaults to `"rgb"`.
        batch_size: Images per batch, or `None` for single images. Defaults to `32`.
        image_size: `(height, width)` every image is resized to. Defaults to `(256, 256)`.
        shuffle: Whether to shuffle the images. Defaults to `True`.
        seed: Seed of the shuffle and of the validation split. Defaults to `None`.
        validation_split: Fraction in (0, 1) of the images held out, or `None`.
        subset: `"training"`, `"validation"` or `"both"` (with `validation_split`). Defaults to
            `None`.
        interpolation: `"bilinear"` or `"nearest"`. Defaults to `"bilinear"`.
        follow_links: Whether to follow symbolic links to subfolders. Defaults to `False`.
        crop_to_aspect_ratio: Whether to crop to the target aspect ratio before resizing. Defaults
            to `False`.
        pad_to_aspect_ratio: Whether to pad to the target aspect ratio before resizing. Defaults to
            `False`.
        data_format: `"channels_last"` (height, width, channels) or `"channels_first"`; `None`:
            `fastnn.backend.image_data_format()`.
        verbose: Whether to print how many files and classes were found. Defaults to `True`.

    Returns:
        A `PyDataset` of `(images, labels)` batches (or images only), or a list of two with
        `subset="both"`.
    """
    if labels not in ("inferred", None):
        if not isinstance(labels, (list, tuple)):
            raise ValueError("`labels` argument should be a list/tuple of integer labels, of "
                             "the same size as the number of image files in the target "
                             "directory. If you wish to infer the labels from the subdirectory "
                             'names in the target directory, pass `labels="inferred"`. If you '
                             "wish to get a dataset that only contains images (no labels), "
                             f"pass `labels=None`. Received: labels={labels}")
        if class_names:
            raise ValueError('You can only pass `class_names` if `labels="inferred"`. '
                             f"Received: labels={labels}, and class_names={class_names}")
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError('`label_mode` argument must be one of "int", "categorical", "binary", '
                         f"or None. Received: label_mode={label_mode}")
    if labels is None or label_mode is None:
        labels = label_mode = None
    if color_mode not in ("rgb", "rgba", "grayscale"):
        raise ValueError('`color_mode` must be one of {"rgb", "rgba", "grayscale"}. '
                         f"Received: color_mode={color_mode}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    elif not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
        raise ValueError("Invalid `image_size` value. Expected a tuple of 2 integers. "
                         f"Received: image_size={image_size}")
    interpolation = str(interpolation).lower()
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise ValueError(f"Argument `interpolation` should be one of {RESIZE_INTERPOLATIONS} "
                         f"in fastnn (Keras also has bicubic, area, lanczos3, lanczos5, "
                         f"gaussian, mitchellcubic). Received: interpolation={interpolation}")
    if batch_size is None or isinstance(batch_size, bool) or \
            not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError("batch_size must be a positive int (fastnn's dataset yields batches; "
                         f"batch_size=None, single images, is not supported). Received: "
                         f"batch_size={batch_size!r}")
    if validation_split and not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be between 0 and 1, received: "
                         f"{validation_split}")
    if (validation_split or subset) and not (validation_split and subset):
        raise ValueError("If `subset` is set, `validation_split` must be set, and inversely.")
    if subset not in ("training", "validation", "both", None):
        raise ValueError('`subset` must be either "training", "validation" or "both", '
                         f"received: {subset}")
    if validation_split and shuffle and seed is None:
        raise ValueError("If using `validation_split` and shuffling the data, you must provide "
                         "a `seed` argument, to make sure that there is no overlap between "
                         "the training and validation subset.")
    data_format = _data_format(data_format)
    if seed is None:
        seed = np.random.randint(1e6)
    paths, found, class_names = _index_directory(directory, labels, class_names, follow_links)
    if label_mode == "binary" and len(class_names) != 2:
        raise ValueError('When passing `label_mode="binary"`, there must be exactly 2 '
                         f"class_names. Received: class_names={class_names}")
    if verbose:
        print(f"Found {len(paths)} files." if found is None else
              f"Found {len(paths)} files belonging to {len(class_names)} classes.")
    if shuffle:     # the same global shuffle as Keras's (so the same split for a seed)
        np.random.RandomState(seed).shuffle(paths)
        if found is not None:
            np.random.RandomState(seed).shuffle(found)
    if found is not None and label_mode in ("int", "categorical", "binary"):
        found = np.asarray(found)
        if found.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got dtype {found.dtype}")

    def make(part, part_labels, part_shuffle):
        return ImageDataset(part, part_labels, label_mode, len(class_names or ()), batch_size,
                            image_size, color_mode, interpolation, crop_to_aspect_ratio,
                            pad_to_aspect_ratio, data_format, part_shuffle, seed, class_names)

    n_val = int(validation_split * len(paths)) if validation_split else 0

    def split(which):
        if not validation_split:
            return paths, found
        if which == "training":
            print(f"Using {len(paths) - n_val} files for training.")
            return paths[:len(paths) - n_val], None if found is None else \
                found[:len(paths) - n_val]
        print(f"Using {n_val} files for validation.")
        return paths[len(paths) - n_val:], None if found is None else found[len(paths) - n_val:]

    if subset == "both":
        (train_paths, train_labels), (val_paths, val_labels) = split("training"), \
            split("validation")
        for part, what in ((train_paths, "training"), (val_paths, "validation")):
            if not part:
                raise ValueError(f"No {what} images found in directory {directory}. Allowed "
                                 f"formats: {ALLOWLIST_FORMATS}")
        return [make(train_paths, train_labels, shuffle), make(val_paths, val_labels, False)]
    part_paths, part_labels = split(subset)
    if not part_paths:
        raise ValueError(f"No images found in directory {directory}. Allowed formats: "
                         f"{ALLOWLIST_FORMATS}")
    return make(part_paths, part_labels, shuffle)
