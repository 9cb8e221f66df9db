"""fastnn.images (exported from fastnn.utils): load_img / img_to_array / array_to_img / save_img
on PNG files written here (compared with keras.utils when Keras is installed), Pillow as an
optional dependency, and resize against keras.ops.image.resize."""
import io
import subprocess
import sys

import numpy as np
import pytest

from fastnn.images import resize
from fastnn.utils import array_to_img, img_to_array, load_img, save_img


def _keras():
    try:
        import keras
    except ImportError as exc:
        pytest.skip(f"keras does not import ({exc}): pip install keras torch==2.13.0 and set "
                    "KERAS_BACKEND=torch")
    return keras


@pytest.fixture
def pil():
    return pytest.importorskip("PIL.Image")


@pytest.fixture
def photo(rng):
    return rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)     # height 30, width 45


def test_png_round_trip(pil, photo, tmp_path):
    path = tmp_path / "photo.png"
    save_img(path, photo, scale=False)
    img = load_img(path)
    assert img.mode == "RGB" and img.size == (45, 30)
    x = img_to_array(img)
    assert x.dtype == np.float32 and x.shape == (30, 45, 3)
    np.testing.assert_array_equal(x, photo)
    img = array_to_img(photo, scale=False)
    assert img.mode == "RGB" and img.size == (45, 30)
    np.testing.assert_array_equal(np.asarray(img), photo)
    assert img_to_array(load_img(str(path)), dtype="uint8").dtype == np.uint8
    assert img_to_array(img, data_format="channels_first").shape == (3, 30, 45)
    with open(path, "rb") as f:                         # an in-memory file too
        np.testing.assert_array_equal(img_to_array(load_img(io.BytesIO(f.read()))), photo)


def test_target_size_grayscale_rgba(pil, photo, tmp_path):
    path = tmp_path / "photo.png"
    save_img(path, photo, scale=False)
    small = load_img(path, target_size=(10, 15))
    assert small.size == (15, 10)
    # "nearest" (the default) picks pixels of the original: Pillow's (i + 0.5) * 3 - 0.5 rounding
    np.testing.assert_array_equal(img_to_array(small), photo[1::3, 1::3])
    gray = img_to_array(load_img(path, color_mode="grayscale"))
    assert gray.shape == (30, 45, 1)
    expected = (photo @ np.array([299, 587, 114]) + 500) // 1000     # ITU-R 601 luma, as PIL's L
    np.testing.assert_allclose(gray[..., 0], expected, atol=1)
    rgba = img_to_array(load_img(path, color_mode="rgba"))
    assert rgba.shape == (30, 45, 4) and np.all(rgba[..., 3] == 255)
    square = load_img(path, target_size=(20, 20), keep_aspect_ratio=True)
    # the centred 30x30 crop, shrunk to 20x20
    ref = pil.fromarray(photo[:, 7:37]).resize((20, 20), pil.Resampling.NEAREST)
    np.testing.assert_array_equal(np.asarray(square), np.asarray(ref))


def test_matches_keras_utils(pil, photo, tmp_path):
    keras = _keras()
    path = str(tmp_path / "photo.png")
    save_img(path, photo, scale=False)
    for kw in [{}, {"target_size": (20, 17), "interpolation": "bilinear"},
               {"target_size": (20, 20), "keep_aspect_ratio": True},
               {"target_size": (40, 20), "keep_aspect_ratio": True, "interpolation": "bicubic"},
               {"color_mode": "grayscale", "target_size": (7, 9)}, {"color_mode": "rgba"}]:
        ours = img_to_array(load_img(path, **kw))
        theirs = keras.utils.img_to_array(keras.utils.load_img(path, **kw))
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs, err_msg=str(kw))
    floats = np.linspace(-2.0, 3.0, 30 * 45 * 3).reshape(30, 45, 3)
    for x, kw in [(floats, {}), (floats[..., :1], {}), (photo, {"scale": False}),
                  (floats[..., :1] * 1000, {"scale": False}), (np.zeros((4, 4, 4)), {}),
                  (photo.transpose(2, 0, 1), {"data_format": "channels_first"})]:
        ours, theirs = array_to_img(x, **kw), keras.utils.array_to_img(x, **kw)
        assert ours.mode == theirs.mode
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_scale_and_modes(pil):
    x = np.array([[[0.0], [0.5]], [[1.0], [2.0]]])
    img = array_to_img(x)                               # scaled: min..max -> 0..255, truncated
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 63], [127, 255]])
    assert array_to_img(x * 300, scale=False).mode == "I"
    assert array_to_img(np.zeros((2, 2, 4))).mode == "RGBA"


def test_errors(pil, photo, tmp_path):
    path = tmp_path / "p.png"
    save_img(path, photo, scale=False)
    with pytest.raises(ValueError, match="color_mode"):
        load_img(path, color_mode="bgr")
    with pytest.raises(ValueError, match="Invalid interpolation method cubic"):
        load_img(path, target_size=(5, 5), interpolation="cubic")
    with pytest.raises(ValueError, match="target_size"):
        load_img(path, target_size=(5,))
    with pytest.raises(TypeError, match="path should be path-like or io.BytesIO"):
        load_img(3)
    with pytest.raises(ValueError, match="rank 3"):
        array_to_img(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="channel number: 2"):
        array_to_img(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="data_format"):
        img_to_array(photo, data_format="nhwc")
    with pytest.raises(ValueError, match="Unsupported image shape"):
        img_to_array(np.zeros(3))


def test_jpeg_of_rgba_converts(pil, tmp_path):
    with pytest.warns(UserWarning, match="JPEG"):
        save_img(tmp_path / "a.jpg", np.full((4, 4, 4), 200, np.uint8), scale=False)
    assert load_img(tmp_path / "a.jpg").size == (4, 4)


def test_without_pillow_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)      # import PIL now fails
    with pytest.raises(ImportError, match=r'pip install "fastnn\[image\]"'):
        load_img("any.png")
    with pytest.raises(ImportError, match="Pillow"):
        array_to_img(np.zeros((2, 2, 3)))
    # fastnn.utils imports without Pillow, and img_to_array needs none
    code = ("import sys; sys.modules['PIL'] = None\n"
            "import numpy as np, fastnn.utils as u\n"
            "print(u.img_to_array(np.ones((2, 3))).shape, 'PIL' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "3,", "1)", "True"]


# ---------------------------------------------------------------- resize
def test_resize_known_values():
    x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[:, :, None]
    up = resize(x, (4, 4))[..., 0]          # half-pixel centres, edges clamped
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(up[:, 0], [0, 0.5, 1.5, 2])
    near = resize(x, (4, 4), interpolation="nearest")[..., 0]
    np.testing.assert_array_equal(near, [[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2)
    wide = np.arange(8, dtype=np.float32).reshape(2, 4, 1)
    padded = resize(wide, (4, 4), interpolation="nearest", pad_to_aspect_ratio=True,
                    fill_value=-1)[..., 0]
    np.testing.assert_array_equal(padded, [[-1] * 4, [0, 1, 2, 3], [4, 5, 6, 7], [-1] * 4])
    cropped = resize(wide, (2, 2), interpolation="nearest", crop_to_aspect_ratio=True)[..., 0]
    np.testing.assert_array_equal(cropped, [[1, 2], [5, 6]])
    down = resize(np.arange(4, dtype=np.float32).reshape(1, 4, 1), (1, 2), antialias=True)
    # a triangle 2 pixels wide each side of centres 1 and 3, cut at the edges: weights
    # (.75, .75, .25) on pixels 0-2 and (.25, .75, .75) on pixels 1-3, normalised
    np.testing.assert_allclose(down[0, :, 0], [1.25 / 1.75, 4 / 1.75], rtol=1e-6)


def test_resize_photo_for_resnet_keeps_dtype_and_aspect(rng):
    photo = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    out = resize(photo, (224, 224), pad_to_aspect_ratio=True)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.all(out[:, :37] == 0) and np.all(out[:, -37:] == 0)    # 50 columns each side
    batch = resize(np.stack([photo, photo]).astype(np.float64), (50, 40))
    assert batch.shape == (2, 50, 40, 3) and batch.dtype == np.float64


CASES = [((13, 17), (7, 5)), ((8, 8), (20, 31)), ((224, 300), (224, 224)),
         ((30, 10), (6, 11)), ((5, 7), (1, 1)), ((9, 9), (9, 9))]


@pytest.mark.parametrize("shape,size", CASES)
@pytest.mark.parametrize("interpolation,antialias", [("nearest", False), ("bilinear", False),
                                                     ("bilinear", True)])
@pytest.mark.parametrize("aspect", [None, "crop", "pad"])
def test_resize_matches_keras(rng, shape, size, interpolation, antialias, aspect):
    keras = _keras()
    kw = dict(interpolation=interpolation, antialias=antialias, fill_value=3.0,
              crop_to_aspect_ratio=aspect == "crop", pad_to_aspect_ratio=aspect == "pad")
    batch = rng.uniform(0, 255, (2,) + shape + (3,))
    for x in (batch.astype(np.float32), batch[0].astype(np.float32), batch,
              batch.astype(np.uint8)):
        ours = resize(x, size, **kw)
        theirs = keras.ops.convert_to_numpy(keras.ops.image.resize(x, size, **kw))
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        if x.dtype == np.uint8:     # rounded: a float32 value a hair from .5 may round apart
            diff = np.abs(ours.astype(int) - theirs)
            assert diff.max() <= 1 and np.mean(diff) < 0.01
        elif interpolation == "nearest":
            np.testing.assert_array_equal(ours, theirs)
        else:
            np.testing.assert_allclose(ours, theirs, rtol=0,
                                       atol=1e-9 if x.dtype == np.float64 else 2e-4)
    first = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    ours = resize(first, size, data_format="channels_first", **kw)
    theirs = keras.ops.convert_to_numpy(keras.ops.image.resize(
        first, size, data_format="channels_first", **kw))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_resize_errors():
    x = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"\('nearest', 'bilinear'\).*interpolation=bicubic"):
        resize(x, (2, 2), interpolation="bicubic")
    for size in [(2,), 2, (2.5, 2), ("a", "b")]:
        with pytest.raises(ValueError, match="`size`"):
            resize(x, size)
    with pytest.raises(ValueError, match="positive"):
        resize(x, (0, 2))
    with pytest.raises(ValueError, match="rank"):
        resize(np.zeros((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="Only one of"):
        resize(x, (2, 2), crop_to_aspect_ratio=True, pad_to_aspect_ratio=True)
    with pytest.raises(ValueError, match="fill_mode"):
        resize(x, (2, 2), fill_mode="reflect")
    with pytest.raises(ValueError, match="data_format"):
        resize(x, (2, 2), data_format="nchw")
