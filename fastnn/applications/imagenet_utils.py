"""keras.applications.imagenet_utils: preprocess_input and decode_predictions for ImageNet models.

preprocess_input works as Keras's does on a NumPy array: a float array is changed in place (and
in "caffe" mode the result is a channel-reversed view of it); any other dtype is first copied to
float32. decode_predictions reads Keras's class index file, fetched once through get_file into
Keras's cache (`$KERAS_HOME/models`, default ~/.keras/models) and read as JSON.
"""
import json

import numpy as np

from .. import activations
from ..backend import image_data_format
from ..downloads import get_file

CLASS_INDEX_PATH = ("https://storage.googleapis.com/download.tensorflow.org/"
                    "data/imagenet_class_index.json")
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"     # Keras's pin
_class_index = None     # {"0": ["n01440764", "tench"], ...}, loaded on first use

# Per-channel means (and stds) of ImageNet: caffe's in BGR order on 0..255, torch's in RGB
# order on 0..1.
_CAFFE_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def preprocess_input(x, data_format=None, mode="caffe"):
    """Prepare a batch of images (values 0..255, 3 color channels) for an ImageNet model.

    A float array is preprocessed in place (pass a copy to keep it); uint8 or other non-float input
    returns a new float32 array.

    Args:
        x: Images, an array `(..., height, width, 3)` (channels last) with values in 0..255.
        data_format: `"channels_last"` or `"channels_first"`; `None`:
            `fastnn.backend.image_data_format()`.
        mode: `"caffe"` (ResNet50, VGG: RGB to BGR, then the ImageNet mean of each channel
            subtracted, no scaling), `"tf"` (scaled to -1..1) or `"torch"` (scaled to 0..1, then
            each channel normalized by ImageNet's mean and std). Defaults to `"caffe"`.

    Returns:
        The preprocessed float32 array.
    """
    if mode not in ("caffe", "tf", "torch"):
        raise ValueError("Expected mode to be one of `caffe`, `tf` or `torch`. "
                         f"Received: mode={mode}")
    if data_format is None:
        data_format = image_data_format()
    elif data_format not in ("channels_first", "channels_last"):
        raise ValueError("Expected data_format to be one of `channels_first` or "
                         f"`channels_last`. Received: data_format={data_format}")
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype("float32")
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    # channels_first: the channel axis is 0 for one image (3-D), 1 for a batch.
    axis = (0 if x.ndim == 3 else 1) if data_format == "channels_first" else x.ndim - 1
    if x.ndim < 1 or x.shape[axis] != 3:
        raise ValueError(f"preprocess_input(mode={mode!r}) expects images with 3 color channels "
                         f"on axis {axis} ({data_format}). Received: x.shape={x.shape}")
    shape = [1] * x.ndim
    shape[axis] = 3
    if mode == "torch":
        x /= 255.0
        x -= np.asarray(_TORCH_MEAN, x.dtype).reshape(shape)
        x /= np.asarray(_TORCH_STD, x.dtype).reshape(shape)
        return x
    x = np.flip(x, axis)        # RGB -> BGR, a view: the caller's array is updated, as in Keras
    x -= np.asarray(_CAFFE_MEAN, x.dtype).reshape(shape)
    return x


def decode_predictions(preds, top=5):
    """ImageNet class probabilities (samples, 1000) -> per sample, the `top` classes as
    (class_name, class_description, score) tuples, best first, e.g.
    [[("n02437616", "llama", 0.92), ...], ...].

    Args:
        preds: Class probabilities, shape `(samples, 1000)`.
        top: How many classes to return per sample. Defaults to `5`.

    Returns:
        A list (one per sample) of lists of `(class_name, class_description, score)`.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError("`decode_predictions` expects a batch of predictions (i.e. a 2D array "
                         f"of shape (samples, 1000)). Received array with shape: {preds.shape}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int. Received: top={top!r}")
    index = _load_class_index()
    results = []
    for pred in preds:
        best = pred.argsort()[-top:][::-1]
        result = [tuple(index[str(i)]) + (pred[i],) for i in best]
        result.sort(key=lambda r: r[2], reverse=True)
        results.append(result)
    return results


def _load_class_index():
    global _class_index
    if _class_index is None:
        path = get_file("imagenet_class_index.json", CLASS_INDEX_PATH, cache_subdir="models",
                        file_hash=CLASS_INDEX_MD5)
        with open(path, encoding="utf-8") as f:
            _class_index = json.load(f)
    return _class_index


def obtain_input_shape(input_shape, default_size, min_size, require_flatten, weights=None):
    """The model's input shape (channels-last), checked as Keras checks it: ImageNet weights
    with the classifier need exactly (default_size, default_size, 3); otherwise any shape of
    three axes, at least min_size on each side, 3 channels for ImageNet weights; no shape
    gives (None, None, 3), any image size (or the default size with the classifier).

    Args:
        input_shape: The shape asked for, or `None`.
        default_size: The model's default image size.
        min_size: The smallest image size allowed.
        require_flatten: Whether the classifier is included (then the size is fixed).
        weights: The `weights` argument of the model. Defaults to `None`.

    Returns:
        The input shape, a tuple.
    """
    default_shape = (default_size, default_size, 3)
    if weights != "imagenet" and input_shape and len(input_shape) == 3:
        default_shape = (default_size, default_size, input_shape[-1])
    if weights == "imagenet" and require_flatten:
        if input_shape is not None and tuple(input_shape) != default_shape:
            raise ValueError("When setting `include_top=True` and loading `imagenet` weights, "
                             f"`input_shape` should be {default_shape}.  Received: "
                             f"input_shape={input_shape}")
        return default_shape
    if input_shape:
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be a tuple of three integers.")
        if input_shape[-1] != 3 and weights == "imagenet":
            raise ValueError(f"The input must have 3 channels; Received `input_shape="
                             f"{input_shape}`")
        if any(side is not None and side < min_size for side in input_shape[:2]):
            raise ValueError(f"Input size must be at least {min_size}x{min_size}; Received: "
                             f"input_shape={input_shape}")
    else:
        input_shape = default_shape if require_flatten else (None, None, 3)
    if require_flatten and None in tuple(input_shape):
        raise ValueError("If `include_top` is True, you should specify a static "
                         f"`input_shape`. Received: input_shape={input_shape}")
    return tuple(input_shape)


def validate_activation(classifier_activation, weights):
    """Pretrained weights go with a softmax or a linear classifier only (as Keras checks).

    Args:
        classifier_activation: The classifier's activation.
        weights: The `weights` argument.
    """
    if weights is None:
        return
    fn = activations.get(classifier_activation)
    if fn not in (activations.softmax, activations.linear):
        raise ValueError("Only `None` and `softmax` activations are allowed for the "
                         "`classifier_activation` argument when using pretrained weights, "
                         "with `include_top=True`; Received: "
                         f"classifier_activation={classifier_activation}")
