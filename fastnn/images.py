"""Image helpers: keras.utils.load_img / img_to_array / array_to_img / save_img (Pillow, an
optional dependency imported only when a function needs it), and keras.ops.image.resize in
NumPy.

resize computes what Keras 3 computes (checked against its torch backend): half-pixel centres,
"nearest" picks floor((i + 0.5) * in / out), "bilinear" interpolates the two nearest pixels
(edges clamped), antialias=True widens the bilinear (triangle) filter by the downscale factor;
crop_to_aspect_ratio / pad_to_aspect_ratio cut or pad the input to the target's aspect ratio
first (centred). Integer images are resized in float32 and rounded back.
"""
import io
import os
import warnings

import numpy as np

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
        from .backend import image_data_format
        return image_data_format()
    value = str(data_format).lower()
    if value not in ("channels_first", "channels_last"):
        raise ValueError("The `data_format` argument must be one of {'channels_first', "
                         f"'channels_last'}}. Received: data_format={data_format}")
    return value


# ---------------------------------------------------------------- files (Pillow)
def load_img(path, color_mode="rgb", target_size=None, interpolation="nearest",
             keep_aspect_ratio=False):
    """Load an image file (a path or an io.BytesIO) as a PIL Image.

    color_mode: "rgb", "rgba" or "grayscale". target_size: (height, width) to resize to with
    Pillow's `interpolation` ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos");
    keep_aspect_ratio crops the centre to the target's aspect ratio first.
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
    (height, width, channels), or (channels, height, width) for channels_first."""
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
    then truncated to integers, as Keras does."""
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
    the file name unless `file_format` is given, which a file object needs)."""
    if file_format is None and isinstance(path, (str, os.PathLike)):
        file_format = os.path.splitext(os.fspath(path))[1][1:].lower() or None
    if file_format and file_format.lower() == "jpg":
        file_format = "jpeg"
    img = array_to_img(x, data_format=data_format, scale=scale)
    if img.mode == "RGBA" and file_format == "jpeg":
        warnings.warn("The JPEG format does not support RGBA images, converting to RGB.")
        img = img.convert("RGB")
    img.save(path, format=file_format, **kwargs)


# ---------------------------------------------------------------- resize (NumPy)
def resize(images, size, interpolation="bilinear", antialias=False, crop_to_aspect_ratio=False,
           pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0, data_format=None):
    """Resize an image (3-D) or a batch (4-D) to size=(height, width): keras.ops.image.resize.
    Returns an array of the input's dtype (float64 stays float64; other dtypes are resized in
    float32, integers rounded back)."""
    if (not isinstance(size, (tuple, list, np.ndarray)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in size)):
        raise ValueError(f"Expected `size` to be a tuple of 2 integers. Received: size={size}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"`size` must have positive height and width. Received: size={size}")
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError("Invalid images rank: expected rank 3 (single image) or rank 4 (batch "
                         f"of images). Received input with shape: images.shape={x.shape}")
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
    channels_first = _data_format(data_format) == "channels_first"
    out_h, out_w = int(size[0]), int(size[1])

    single = x.ndim == 3
    if single:
        x = x[None]
    if channels_first:
        x = x.transpose(0, 2, 3, 1)
    out_dtype = x.dtype
    work = x if out_dtype in (np.float32, np.float64) else x.astype(np.float32)

    h, w = work.shape[1:3]
    if crop_to_aspect_ratio:
        crop_h = max(min(h, int(w * out_h / out_w)), 1)
        crop_w = max(min(w, int(h * out_w / out_h)), 1)
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        work = work[:, top:top + crop_h, left:left + crop_w]
    elif pad_to_aspect_ratio:
        # Keras pads floor((padded - h) / 2) on each side, so an odd difference loses a row.
        pad_h = (max(h, int(w * out_h / out_w)) - h) // 2
        pad_w = (max(w, int(h * out_w / out_h)) - w) // 2
        if pad_h or pad_w:
            work = np.pad(work, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)),
                          constant_values=work.dtype.type(fill_value))

    for axis, n_out in ((2, out_w), (1, out_h)):     # width first: torch's order (rounding)
        n_in = work.shape[axis]
        if interpolation == "nearest":
            work = np.take(work, _nearest_index(n_in, n_out), axis=axis)
        else:
            idx, wts = _linear_taps(n_in, n_out, antialias, work.dtype)
            work = _apply_taps(work, axis, idx, wts)

    if out_dtype.kind in "iu":
        work = np.round(work)
    out = work.astype(out_dtype, copy=False)
    if channels_first:
        out = out.transpose(0, 3, 1, 2)
    return out[0] if single else out


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


def _apply_taps(x, axis, idx, wts):
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(idx.shape[1]):
        term = np.take(x, idx[:, k], axis=axis) * wts[:, k].reshape(shape)
        out = term if out is None else out + term
    return out
