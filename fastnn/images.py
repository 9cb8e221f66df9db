"""Image helpers: keras.utils.load_img / img_to_array / array_to_img / save_img (Pillow, an
optional dependency imported only when a function needs it), and keras.ops.image.resize in
NumPy.

resize computes what Keras 3 computes (checked against its torch backend): half-pixel centres,
"nearest" picks floor((i + 0.5) * in / out), "bilinear" interpolates the two nearest pixels
(edges clamped), antialias=True widens the bilinear (triangle) filter by the downscale factor;
crop_to_aspect_ratio / pad_to_aspect_ratio cut or pad the input to the target's aspect ratio
first (centred). Integer images are resized in float32 and rounded back.

affine_transform samples each output pixel at an affine map of its position (nearest or
bilinear, the fill modes of keras.ops.image.affine_transform), as Keras's torch backend does.
Both run where their input is (NumPy, or the backend's device arrays) and have a backward
(resize_backward, affine_transform_backward) for fastnn.ops.image's gradients.
"""
import io
import os
import warnings

import numpy as np

from .backend import get_ops, image_data_format

RESIZE_INTERPOLATIONS = ("nearest", "bilinear")
PIL_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")


def _pil_image():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError('fastnn\'s image files need Pillow: pip install "fastnn[image]" '
                          "(or pip install Pillow)") from exc
    return Image


def _data_format(data_format):
    if data_format is None:
        return image_data_format()
    value = str(data_format).lower()
    if value not in ("channels_first", "channels_last"):
        raise ValueError("The `data_format` argument must be one of {'channels_first', "
                         f"'channels_last'}}. Received: data_format={data_format}")
    return value


# ---------------------------------------------------------------- files (Pillow)
def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest",
             keep_aspect_ratio=False):
    """Load an image file (a path or an `io.BytesIO`) as a PIL image. Needs Pillow.

    Args:
        path: Path of the image file, or a file-like object.
        color_mode: `"rgb"`, `"rgba"` or `"grayscale"`. Defaults to `"rgb"`.
        target_size: `(height, width)` to resize to, or `None` to keep the size.
        interpolation: Pillow's resampling filter: `"nearest"`, `"bilinear"`, `"bicubic"`,
            `"hamming"`, `"box"` or `"lanczos"`. Defaults to `"nearest"`.
        keep_aspect_ratio: Whether to crop the centre to the target's aspect ratio before resizing.
            Defaults to `False`.

    Returns:
        A `PIL.Image.Image`.

    Example:

    ```python
    img = fastnn.utils.load_img("cat.jpg", target_size=(224, 224))
    x = fastnn.utils.img_to_array(img)[None]   # (1, 224, 224, 3)
    ```
    """
    if color_mode not in ("grayscale", "rgb", "rgba"):
        raise ValueError('color_mode must be "grayscale", "rgb", or "rgba"')
    if target_size is not None:
        if (len(target_size) != 2 or not all(isinstance(v, (int, np.integer))
                                             and not isinstance(v, bool) and v > 0
                                             for v in target_size)):
            raise ValueError("target_size must be (height, width), two positive ints. "
                             f"Received: target_size={target_size}")
        if interpolation not in PIL_INTERPOLATIONS:
            raise ValueError(f"Invalid interpolation method {interpolation} specified. "
                             f"Supported methods are {', '.join(PIL_INTERPOLATIONS)}")
    Image = _pil_image()
    if isinstance(path, io.BytesIO):
        img = Image.open(path)
    elif isinstance(path, (str, bytes, os.PathLike)):
        with open(path, "rb") as f:     # read whole, so the file is closed when we return
            img = Image.open(io.BytesIO(f.read()))
    else:
        raise TypeError(f"path should be path-like or io.BytesIO, not {type(path)}")

    if color_mode == "grayscale":
        if img.mode not in ("L", "I;16", "I"):
            img = img.convert("L")
    elif img.mode != color_mode.upper():
        img = img.convert(color_mode.upper())

    if target_size is not None:
        size = (int(target_size[1]), int(target_size[0]))      # PIL wants (width, height)
        if img.size != size:
            resample = getattr(Image.Resampling, interpolation.upper())
            box = None
            if keep_aspect_ratio:   # the largest centred crop with the target's aspect ratio
                width, height = img.size
                crop_h = min(height, (width * size[1]) // size[0])
                crop_w = min(width, (height * size[0]) // size[1])
                top, left = (height - crop_h) // 2, (width - crop_w) // 2
                box = (left, top, left + crop_w, top + crop_h)
            img = img.resize(size, resample, box=box)
    return img


def img_to_array(img, data_format=None, dtype=None):
    """A PIL Image (or anything np.asarray takes) as a 3-D array, float32 by default:
    (height, width, channels), or (channels, height, width) for channels_first.

    Args:
        img: A PIL image (or anything `np.asarray` takes).
        data_format: `"channels_last"` (height, width, channels) or `"channels_first"`; `None`:
            `fastnn.backend.image_data_format()`.
        dtype: Data type of the array; `None`: float32.

    Returns:
        A 3-D NumPy array.
    """
    data_format = _data_format(data_format)
    x = np.asarray(img, dtype=dtype or "float32")
    if x.ndim == 2:     # grayscale: add the channel axis
        x = x[None] if data_format == "channels_first" else x[:, :, None]
    elif x.ndim == 3:
        if data_format == "channels_first":
            x = x.transpose(2, 0, 1)
    else:
        raise ValueError(f"Unsupported image shape: {x.shape}")
    return x


def array_to_img(x, data_format=None, scale=True, dtype=None):
    """A 3-D array as a PIL Image: 3 channels RGB, 4 RGBA, 1 grayscale ("L", or 32-bit "I"
    when values exceed 255). scale=True maps the array's min..max to 0..255 first; values are
    then truncated to integers, as Keras does.

    Args:
        x: A 3-D array.
        data_format: `"channels_last"` (height, width, channels) or `"channels_first"`; `None`:
            `fastnn.backend.image_data_format()`.
        scale: Whether to map the array's range to 0..255 first. Defaults to `True`.
        dtype: Accepted for Keras compatibility; `None` or a NumPy dtype name.

    Returns:
        A `PIL.Image.Image`.
    """
    data_format = _data_format(data_format)
    Image = _pil_image()
    x = np.asarray(x, dtype=dtype or "float32")
    if x.ndim != 3:
        raise ValueError("Expected image array to have rank 3 (single image). "
                         f"Got array with shape: {x.shape}")
    if data_format == "channels_first":
        x = x.transpose(1, 2, 0)
    if scale:
        x = x - np.min(x)
        top = np.max(x)
        if top != 0:
            x /= top
        x *= 255
    channels = x.shape[2]
    if channels in (3, 4):
        return Image.fromarray(x.astype("uint8"))      # mode RGB / RGBA from the shape
    if channels == 1:
        if np.max(x) > 255:
            return Image.fromarray(x[:, :, 0].astype("int32"))     # mode "I"
        return Image.fromarray(x[:, :, 0].astype("uint8"))         # mode "L"
    raise ValueError(f"Unsupported channel number: {channels}")


def save_img(path, x, data_format=None, file_format=None, scale=True, **kwargs):
    """Save a 3-D array as an image file (array_to_img, then PIL's save; the format comes from
    the file name unless `file_format` is given, which a file object needs).

    Args:
        path: Path of the file, or a file object.
        x: A 3-D array.
        data_format: `"channels_last"` (height, width, channels) or `"channels_first"`; `None`:
            `fastnn.backend.image_data_format()`.
        file_format: The image format (e.g. `"png"`); `None`: from the file name.
        scale: Whether to map the array's range to 0..255 first. Defaults to `True`.
        **kwargs: Passed to PIL's `Image.save`.
    """
    if file_format is None and isinstance(path, (str, os.PathLike)):
        file_format = os.path.splitext(os.fspath(path))[1][1:].lower() or None
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn("The JPEG format does not support RGBA images, converting to RGB.",
                      stacklevel=2)
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


# ---------------------------------------------------------------- resize, affine_transform
def _array_module(x):
    """NumPy for host data; the backend's array module (CuPy) for its device arrays. The
    small index and weight tables are computed on the host and uploaded."""
    xp = get_ops().xp
    return xp if xp is not np and isinstance(x, xp.ndarray) else np


def _batch_nhwc(x, data_format, what="images"):
    """A 3-D or 4-D image array as a 4-D channels-last batch, and a function undoing that."""
    if x.ndim not in (3, 4):
        raise ValueError("Invalid images rank: expected rank 3 (single image) or rank 4 (batch "
                         f"of images). Received input with shape: {what}.shape={x.shape}")
    channels_first = _data_format(data_format) == "channels_first"
    single = x.ndim == 3
    if single:
        x = x[None]
    if channels_first:
        x = x.transpose(0, 2, 3, 1)

    def back(y):
        if channels_first:
            y = y.transpose(0, 3, 1, 2)
        return y[0] if single else y
    return x, back


def _resize_plan(h, w, size, interpolation, antialias, crop_to_aspect_ratio,
                 pad_to_aspect_ratio, dtype):
    """What resize does to an (h, w) image, on the host: the crop box (top, left, height,
    width) or the pads (rows, columns, each side), then per axis (2, then 1) the taps
    (indices, weights) of each output pixel (weights None: nearest)."""
    out_h, out_w = int(size[0]), int(size[1])
    box = pads = None
    if crop_to_aspect_ratio:
        crop_h = max(min(h, int(w * out_h / out_w)), 1)
        crop_w = max(min(w, int(h * out_w / out_h)), 1)
        box = ((h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w)
        h, w = crop_h, crop_w
    elif pad_to_aspect_ratio:
        # Keras pads floor((padded - h) / 2) on each side, so an odd difference loses a row.
        pad_h = (max(h, int(w * out_h / out_w)) - h) // 2
        pad_w = (max(w, int(h * out_w / out_h)) - w) // 2
        if pad_h or pad_w:
            pads = (pad_h, pad_w)
            h, w = h + 2 * pad_h, w + 2 * pad_w
    steps = []
    for axis, n_in, n_out in ((2, w, out_w), (1, h, out_h)):   # width first: torch's order
        if interpolation == "nearest":
            steps.append((axis, n_in, _nearest_index(n_in, n_out)[:, None], None))
        else:
            steps.append((axis, n_in) + _linear_taps(n_in, n_out, antialias, dtype))
    return box, pads, steps


def _check_resize(size, interpolation, crop_to_aspect_ratio, pad_to_aspect_ratio, fill_mode):
    if (not isinstance(size, (tuple, list, np.ndarray)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in size)):
        raise ValueError(f"Expected `size` to be a tuple of 2 integers. Received: size={size}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"`size` must have positive height and width. Received: size={size}")
    if pad_to_aspect_ratio and crop_to_aspect_ratio:
        raise ValueError("Only one of `pad_to_aspect_ratio` & `crop_to_aspect_ratio` can be "
                         "`True`.")
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise ValueError("Invalid value for argument `interpolation`. Expected one of "
                         f"{RESIZE_INTERPOLATIONS} (fastnn does not implement Keras's 'bicubic', "
                         f"'lanczos3' or 'lanczos5'). Received: interpolation={interpolation}")
    if fill_mode != "constant":
        raise ValueError("Invalid value for argument `fill_mode`. Only `'constant'` is "
                         f"supported. Received: fill_mode={fill_mode}")


def resize(images, size, interpolation="bilinear", antialias=False, crop_to_aspect_ratio=False,
           pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0, data_format=None):
    """Resize an image (3-D) or a batch (4-D) to size=(height, width): keras.ops.image.resize.
    Returns an array of the input's dtype (float64 stays float64; other dtypes are resized in
    float32, integers rounded back), where the input is (NumPy, or the backend's device)."""
    _check_resize(size, interpolation, crop_to_aspect_ratio, pad_to_aspect_ratio, fill_mode)
    xp = _array_module(images)
    x, back = _batch_nhwc(images if xp is not np else np.asarray(images), data_format)
    out_dtype = x.dtype
    work = x if out_dtype in (np.float32, np.float64) else x.astype(np.float32)
    box, pads, steps = _resize_plan(work.shape[1], work.shape[2], size, interpolation,
                                    antialias, crop_to_aspect_ratio, pad_to_aspect_ratio,
                                    work.dtype)
    if box is not None:
        top, left, crop_h, crop_w = box
        work = work[:, top:top + crop_h, left:left + crop_w]
    elif pads is not None:
        work = xp.pad(work, ((0, 0), (pads[0],) * 2, (pads[1],) * 2, (0, 0)),
                      constant_values=work.dtype.type(fill_value))
    for axis, _, idx, wts in steps:
        if wts is None:
            work = xp.take(work, xp.asarray(idx[:, 0]), axis=axis)
        else:
            work = _apply_taps(work, axis, idx, wts, xp)
    if out_dtype.kind in "iu":
        work = xp.round(work)
    return back(work.astype(out_dtype, copy=False))


def resize_backward(grad, input_shape, size, interpolation="bilinear", antialias=False,
                    crop_to_aspect_ratio=False, pad_to_aspect_ratio=False, fill_mode="constant",
                    fill_value=0.0, data_format=None):
    """The gradient of resize (a linear map of its input) for its output's gradient `grad`:
    each axis's taps transposed, then the pad cut off or the crop put back (zeros around)."""
    xp = _array_module(grad)
    g, _ = _batch_nhwc(grad, data_format, "grad")
    like_input, back = _batch_nhwc(np.broadcast_to(np.bool_(0), tuple(input_shape)),
                                   data_format)      # the input's shape, without its data
    h, w = like_input.shape[1:3]
    box, pads, steps = _resize_plan(h, w, size, interpolation, antialias, crop_to_aspect_ratio,
                                    pad_to_aspect_ratio, g.dtype)
    for axis, n_in, idx, wts in reversed(steps):
        matrix = np.zeros((idx.shape[0], n_in), g.dtype)
        rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
        np.add.at(matrix, (rows, idx.reshape(-1)), 1 if wts is None else wts.reshape(-1))
        g = xp.moveaxis(xp.tensordot(g, xp.asarray(matrix), axes=([axis], [0])), -1, axis)
    if box is not None:
        top, left, crop_h, crop_w = box
        g = xp.pad(g, ((0, 0), (top, h - top - crop_h), (left, w - left - crop_w), (0, 0)))
    elif pads is not None:
        g = g[:, pads[0]:pads[0] + h, pads[1]:pads[1] + w]
    return back(xp.ascontiguousarray(g))


AFFINE_INTERPOLATIONS = ("nearest", "bilinear")
AFFINE_FILL_MODES = ("constant", "nearest", "wrap", "mirror", "reflect")


def _mirror(index, size, xp):
    """Keras's "mirror" index: reflected about the edge pixels' centres
    (d c b | a b c d | c b a)."""
    if size == 1:
        return xp.zeros_like(index)
    s = size - 1
    return xp.abs((index + s) % (2 * s) - s)


def _fixed_index(index, size, fill_mode, xp):
    """An index inside [0, size) for every `index`, as fill_mode extends the image: "reflect"
    about the edges (d c b a | a b c d | d c b a), "mirror", "wrap" around, "nearest" (and
    "constant", whose outside taps read fill_value instead) clamped."""
    if fill_mode == "wrap":
        return index % size
    if fill_mode == "mirror":
        return _mirror(index, size, xp)
    if fill_mode == "reflect":
        return (_mirror(2 * index + 1, 2 * size + 1, xp) - 1) // 2
    return xp.clip(index, 0, size - 1)


def _affine_taps(shape, transform, interpolation, fill_mode, xp):
    """The taps of affine_transform for a channels-last batch of `shape`: a list of (rows,
    weights, valid), each (n, h, w): output pixel = sum of weights * (input row `rows` of the
    batch seen as (n * h * w, c) where valid, else fill_value). weights is None for nearest
    (1), valid None unless fill_mode is "constant". Output (x, y) reads the input at
    (a0 x + a1 y + a2, b0 x + b1 y + b2), computed in float32 as Keras computes it."""
    n, h, w = shape[:3]
    t = xp.asarray(transform)
    ys = xp.arange(h, dtype=np.float32)[None, :, None]
    xs = xp.arange(w, dtype=np.float32)[None, None, :]
    a0, a1, a2, b0, b1, b2 = (t[:, k, None, None] for k in range(6))
    coords = ((ys * b1 + xs * b0) + b2, (ys * a1 + xs * a0) + a2)
    per_axis = []
    for coord, size in zip(coords, (h, w)):
        if interpolation == "nearest":
            nodes = [(xp.round(coord).astype(np.int64), None)]
        else:
            lower = xp.floor(coord)
            upper_weight = coord - lower
            index = lower.astype(np.int64)
            nodes = [(index, 1 - upper_weight), (index + 1, upper_weight)]
        per_axis.append([(_fixed_index(i, size, fill_mode, xp),
                          ((i >= 0) & (i < size)) if fill_mode == "constant" else None, wt)
                         for i, wt in nodes])
    first = (xp.arange(n, dtype=np.int64) * (h * w))[:, None, None]
    taps = []
    for iy, vy, wy in per_axis[0]:
        for ix, vx, wx in per_axis[1]:
            weights = None if wy is None else wy * wx
            valid = None if vy is None else vy & vx
            taps.append((first + iy * w + ix, weights, valid))
    return taps


def _check_affine(transform, interpolation, fill_mode, batch):
    if interpolation not in AFFINE_INTERPOLATIONS:
        raise ValueError("Invalid value for argument `interpolation`. Expected of one "
                         f"{set(AFFINE_INTERPOLATIONS)}. Received: interpolation={interpolation}")
    if fill_mode not in AFFINE_FILL_MODES:
        raise ValueError("Invalid value for argument `fill_mode`. Expected of one "
                         f"{set(AFFINE_FILL_MODES)}. Received: fill_mode={fill_mode}")
    t = np.asarray(get_ops().to_numpy(transform), np.float32)
    if t.ndim not in (1, 2) or t.shape[-1] != 8:
        raise ValueError("Invalid transform rank: expected rank 1 (single transform) or rank 2 "
                         "(batch of transforms) of 8 values [a0, a1, a2, b0, b1, b2, c0, c1]. "
                         f"Received input with shape: transform.shape={t.shape}")
    t = np.broadcast_to(t.reshape(-1, 8), (batch, 8)) if t.ndim == 1 or len(t) == 1 else t
    if len(t) != batch:
        raise ValueError(f"affine_transform: {len(t)} transforms for a batch of {batch} images")
    if np.any(t[:, 6:] != 0):
        raise ValueError("affine_transform: fastnn applies affine transforms only: c0 and c1 "
                         f"(the last two of the 8 values) must be 0. Received: {t[:, 6:]}")
    return np.ascontiguousarray(t)


def affine_transform(images, transform, interpolation="bilinear", fill_mode="constant",
                     fill_value=0, data_format=None):
    """keras.ops.image.affine_transform: each output pixel (x, y) of an image (3-D) or batch
    (4-D) samples the input at (a0 x + a1 y + a2, b0 x + b1 y + b2) for its transform [a0, a1,
    a2, b0, b1, b2, 0, 0] ("nearest" or "bilinear"); outside the image, fill_mode "constant"
    reads fill_value, "nearest", "wrap", "mirror" and "reflect" extend the image as Keras does.
    Returns the input's dtype (integers computed in float32 and rounded), where it is."""
    xp = _array_module(images)
    x, back = _batch_nhwc(images if xp is not np else np.asarray(images), data_format)
    t = _check_affine(transform, interpolation, fill_mode, x.shape[0])
    out_dtype = x.dtype
    work = x if out_dtype.kind == "f" else x.astype(np.float32)
    rows = work.reshape(-1, work.shape[3])
    fill = work.dtype.type(fill_value)
    out = None
    for index, weights, valid in _affine_taps(x.shape, t, interpolation, fill_mode, xp):
        term = rows[index]
        if valid is not None:
            term = xp.where(valid[..., None], term, fill)
        if weights is not None:
            term = weights[..., None].astype(work.dtype, copy=False) * term
        out = term if out is None else out + term
    if out_dtype.kind in "iub":
        out = xp.round(out)
    return back(out.astype(out_dtype, copy=False))


def affine_transform_backward(grad, input_shape, transform, interpolation="bilinear",
                              fill_mode="constant", fill_value=0, data_format=None):
    """The gradient of affine_transform for its images (fill_value and the transform get
    none): each tap's weights times `grad`, added back at the pixel it read."""
    xp = _array_module(grad)
    g, back = _batch_nhwc(grad, data_format, "grad")
    like_input, _ = _batch_nhwc(np.broadcast_to(np.bool_(0), tuple(input_shape)), data_format)
    t = _check_affine(transform, interpolation, fill_mode, g.shape[0])
    c = g.shape[3]
    dx = xp.zeros((int(np.prod(like_input.shape[:3])), c), g.dtype)
    for index, weights, valid in _affine_taps(like_input.shape, t, interpolation, fill_mode, xp):
        term = g if weights is None else weights[..., None].astype(g.dtype, copy=False) * g
        if valid is not None:
            term = xp.where(valid[..., None], term, g.dtype.type(0))
        xp.add.at(dx, index.reshape(-1), term.reshape(-1, c))
    return back(dx.reshape(like_input.shape))


def _nearest_index(n_in, n_out):
    """floor((i + 0.5) * scale), with the scale in float32 and the product rounded to float32,
    as torch's "nearest-exact" (Keras's "nearest") computes it: the same pixel at exact ties."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = ((np.arange(n_out) + 0.5) * np.float64(scale)).astype(np.float32)
    return np.minimum(np.floor(src).astype(np.intp), n_in - 1)


def _linear_taps(n_in, n_out, antialias, dtype):
    """(indices, weights), each (n_out, taps): output i = sum_k in[idx[i, k]] * w[i, k].
    Positions are computed as torch computes them for Keras (the scale in the image's float
    type, scale * (i + 0.5) - 0.5 rounded once), so results agree to the last bit or two."""
    scale = dtype.type(n_in) / dtype.type(n_out)
    if antialias:
        return _triangle_taps(n_in, n_out, scale, dtype)
    src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(dtype)
    src = np.maximum(src, 0)
    lo = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
    frac = np.clip(src - lo, 0, 1).astype(dtype)
    return np.stack([lo, np.minimum(lo + 1, n_in - 1)], 1), np.stack([1 - frac, frac], 1)


def _triangle_taps(n_in, n_out, scale, dtype):
    """Antialiased bilinear (torch's and Pillow's filter): a triangle reaching max(scale, 1)
    input pixels each side of an output pixel's centre, its weights summing to one. Upsampling,
    this is plain bilinear up to rounding."""
    support = max(scale, dtype.type(1))
    centre = (np.float64(scale) * (np.arange(n_out) + 0.5)).astype(dtype)
    lo = np.maximum((centre - support + 0.5).astype(np.intp), 0)   # truncation, as C's cast
    hi = np.minimum((centre + support + 0.5).astype(np.intp), n_in)
    idx = lo[:, None] + np.arange(int((hi - lo).max()))
    inv = dtype.type(1.0 / np.float64(support))
    dist = np.abs((((idx.astype(dtype) - centre[:, None]) + 0.5) * np.float64(inv)).astype(dtype))
    wts = np.where((dist < 1) & (idx < hi[:, None]), 1 - dist, 0).astype(dtype)
    wts /= wts.sum(1, keepdims=True)
    return np.minimum(idx, n_in - 1), wts


def _apply_taps(x, axis, idx, wts, xp=np):
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(idx.shape[1]):
        term = xp.take(x, xp.asarray(idx[:, k]), axis=axis) * \
            xp.asarray(np.ascontiguousarray(wts[:, k]).reshape(shape))
        out = term if out is None else out + term
    return out
