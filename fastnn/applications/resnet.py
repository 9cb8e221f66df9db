"""Keras's ResNet50, ResNet101 and ResNet152 (`keras.applications.resnet`): the same layers,
names, order and weights layout, so Keras's ImageNet weight files load as they are."""
import os

from ..downloads import get_file
from ..layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    Input,
    MaxPooling2D,
    ZeroPadding2D,
)
from ..models import Model
from .imagenet_utils import (
    decode_predictions,
    obtain_input_shape,
    preprocess_input,
    validate_activation,
)

__all__ = ["ResNet50", "ResNet101", "ResNet152", "decode_predictions", "preprocess_input"]

BASE_WEIGHTS_PATH = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
# model -> md5 of its weights file with the classifier, and without ("notop")
WEIGHTS_HASHES = {
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
}
BN_EPSILON = 1.001e-5


def ResNet(stack_fn, include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
           pooling=None, classes=1000, classifier_activation="softmax", name="resnet",
           weights_name=None):
    """A ResNet v1 whose residual stages `stack_fn` adds (Keras's ResNet function)."""
    if not (weights in ("imagenet", None) or (isinstance(weights, (str, os.PathLike)) and
                                              os.path.exists(weights))):
        raise ValueError("The `weights` argument should be either `None` (random "
                         "initialization), 'imagenet' (pre-training on ImageNet), or the path "
                         f"to the weights file to be loaded.  Received: weights={weights}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError("If using `weights='imagenet'` with `include_top=True`, `classes` "
                         f"should be 1000.  Received classes={classes}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    input_shape = obtain_input_shape(input_shape, default_size=224, min_size=32,
                                     require_flatten=include_top, weights=weights)
    inputs = Input(shape=input_shape) if input_tensor is None else input_tensor
    x = ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(inputs)
    x = Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = Activation("relu", name="conv1_relu")(x)
    x = ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    x = stack_fn(x)
    if include_top:
        x = GlobalAveragePooling2D(name="avg_pool")(x)
        validate_activation(classifier_activation, weights)
        x = Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = GlobalMaxPooling2D(name="max_pool")(x)
    model = Model(inputs, x, name=name)
    if weights == "imagenet" and weights_name in WEIGHTS_HASHES:
        suffix = "" if include_top else "_notop"
        file_name = f"{weights_name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
        model.load_weights(get_file(file_name, BASE_WEIGHTS_PATH + file_name,
                                    cache_subdir="models",
                                    file_hash=WEIGHTS_HASHES[weights_name][0 if include_top
                                                                           else 1]))
    elif weights is not None:
        model.load_weights(weights)
    return model


def residual_block_v1(x, filters, kernel_size=3, stride=1, conv_shortcut=True, name=None):
    """The bottleneck block: 1x1, kxk, 1x1 convolutions (4 * filters out) plus a shortcut
    (a strided 1x1 convolution, or the input itself)."""
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, strides=stride, name=name + "_0_conv")(x)
        shortcut = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=name + "_0_bn")(shortcut)
    else:
        shortcut = x
    x = Conv2D(filters, 1, strides=stride, name=name + "_1_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=name + "_1_bn")(x)
    x = Activation("relu", name=name + "_1_relu")(x)
    x = Conv2D(filters, kernel_size, padding="same", name=name + "_2_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=name + "_2_bn")(x)
    x = Activation("relu", name=name + "_2_relu")(x)
    x = Conv2D(4 * filters, 1, name=name + "_3_conv")(x)
    x = BatchNormalization(axis=3, epsilon=BN_EPSILON, name=name + "_3_bn")(x)
    x = Add(name=name + "_add")([shortcut, x])
    return Activation("relu", name=name + "_out")(x)


def stack_residual_blocks_v1(x, filters, blocks, stride1=2, name=None):
    """A stage: a block with a convolution shortcut (stride stride1), then blocks - 1 more."""
    x = residual_block_v1(x, filters, stride=stride1, name=name + "_block1")
    for i in range(2, blocks + 1):
        x = residual_block_v1(x, filters, conv_shortcut=False, name=f"{name}_block{i}")
    return x


def _stages(blocks):
    def stack_fn(x):
        x = stack_residual_blocks_v1(x, 64, blocks[0], stride1=1, name="conv2")
        x = stack_residual_blocks_v1(x, 128, blocks[1], name="conv3")
        x = stack_residual_blocks_v1(x, 256, blocks[2], name="conv4")
        return stack_residual_blocks_v1(x, 512, blocks[3], name="conv5")
    return stack_fn


def ResNet50(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet50"):
    """ResNet-50 (Deep Residual Learning for Image Recognition, He et al. 2015), as Keras
    builds it: 25,636,712 parameters with the classifier. `weights="imagenet"` downloads
    Keras's ImageNet weights (cached in ~/.keras/models); a path loads a local file.

    Args:
        include_top: Whether to include the classifier (global average pooling and a Dense layer of
            `classes`). Defaults to `True`.
        weights: `"imagenet"` (Keras's ImageNet weights, downloaded and cached), `None` (random
            initialization), or the path of a weights file. Defaults to `"imagenet"`.
        input_tensor: A `fastnn.Input` tensor to build the model on, or `None`.
        input_shape: The input shape `(height, width, 3)` when `include_top` is false (at least
            32x32); `None`: (224, 224, 3).
        pooling: Without the classifier: `None` (4-D output), `"avg"` or `"max"` (global pooling to
            2-D).
        classes: Number of classes of the classifier (1000 with ImageNet weights). Defaults to
            `1000`.
        classifier_activation: Activation of the classifier: `"softmax"`, `None` or another
            activation (only softmax or linear with pretrained weights). Defaults to `"softmax"`.
        name: Name of the model. Defaults to `"resnet50"`.

    Returns:
        A functional `Model`.

    Example:

    ```python
    model = fastnn.applications.ResNet50(weights="imagenet")
    x = fastnn.applications.resnet50.preprocess_input(images)   # (n, 224, 224, 3), 0..255
    fastnn.applications.resnet50.decode_predictions(model.predict(x), top=3)
    ```
    """
    return ResNet(_stages((3, 4, 6, 3)), include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name, "resnet50")


def ResNet101(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet101"):
    """ResNet-101, as Keras builds it (see ResNet50).

    Args:
        include_top: Whether to include the classifier (global average pooling and a Dense layer of
            `classes`). Defaults to `True`.
        weights: `"imagenet"` (Keras's ImageNet weights, downloaded and cached), `None` (random
            initialization), or the path of a weights file. Defaults to `"imagenet"`.
        input_tensor: A `fastnn.Input` tensor to build the model on, or `None`.
        input_shape: The input shape `(height, width, 3)` when `include_top` is false (at least
            32x32); `None`: (224, 224, 3).
        pooling: Without the classifier: `None` (4-D output), `"avg"` or `"max"` (global pooling to
            2-D).
        classes: Number of classes of the classifier (1000 with ImageNet weights). Defaults to
            `1000`.
        classifier_activation: Activation of the classifier: `"softmax"`, `None` or another
            activation (only softmax or linear with pretrained weights). Defaults to `"softmax"`.
        name: Name of the model. Defaults to `"resnet101"`.

    Returns:
        A functional `Model`.
    """
    return ResNet(_stages((3, 4, 23, 3)), include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name, "resnet101")


def ResNet152(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name="resnet152"):
    """ResNet-152, as Keras builds it (see ResNet50).

    Args:
        include_top: Whether to include the classifier (global average pooling and a Dense layer of
            `classes`). Defaults to `True`.
        weights: `"imagenet"` (Keras's ImageNet weights, downloaded and cached), `None` (random
            initialization), or the path of a weights file. Defaults to `"imagenet"`.
        input_tensor: A `fastnn.Input` tensor to build the model on, or `None`.
        input_shape: The input shape `(height, width, 3)` when `include_top` is false (at least
            32x32); `None`: (224, 224, 3).
        pooling: Without the classifier: `None` (4-D output), `"avg"` or `"max"` (global pooling to
            2-D).
        classes: Number of classes of the classifier (1000 with ImageNet weights). Defaults to
            `1000`.
        classifier_activation: Activation of the classifier: `"softmax"`, `None` or another
            activation (only softmax or linear with pretrained weights). Defaults to `"softmax"`.
        name: Name of the model. Defaults to `"resnet152"`.

    Returns:
        A functional `Model`.
    """
    return ResNet(_stages((3, 8, 36, 3)), include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name, "resnet152")
