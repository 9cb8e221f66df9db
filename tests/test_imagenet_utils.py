"""fastnn.applications.imagenet_utils: preprocess_input against the fixture statistics and
keras.applications.imagenet_utils (every mode, dtype and layout); decode_predictions offline on
Keras's class index file placed in a temporary KERAS_HOME."""
import json
import os
import shutil
import urllib.error

import numpy as np
import pytest

from fastnn import downloads
from fastnn.applications import imagenet_utils
from fastnn.applications.imagenet_utils import decode_predictions, preprocess_input

FIXTURES = os.environ.get("FASTNN_KERAS_FIXTURES") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "fixtures",
    "keras")


def fixture(name):
    path = os.path.join(FIXTURES, name)
    if not os.path.exists(path):
        pytest.skip(f"Keras fixture {name} not found in {FIXTURES} (set FASTNN_KERAS_FIXTURES)")
    return path


def _keras_imagenet_utils():
    try:
        from keras.src.applications import imagenet_utils as theirs
    except ImportError as exc:
        pytest.skip(f"keras does not import ({exc}): pip install keras torch==2.13.0 and set "
                    "KERAS_BACKEND=torch")
    return theirs


@pytest.fixture
def images():
    return np.load(fixture("resnet50_images.npy"))      # uint8 (4, 224, 224, 3)


def test_caffe_mode_matches_the_fixture_statistics(images):
    x = preprocess_input(images.astype(np.float32))
    assert x.dtype == np.float32 and x.shape == (4, 224, 224, 3)
    img = x[0].astype(np.float64)
    assert img.sum() == pytest.approx(6948880.86, abs=0.01)
    assert img.mean() == pytest.approx(46.1634, abs=1e-4)
    assert img.std() == pytest.approx(44.5851, abs=1e-4)
    assert img.min() == pytest.approx(-123.68, abs=1e-4)
    assert img.max() == pytest.approx(151.061, abs=1e-4)
    np.testing.assert_allclose(img[0, 0], [-22.939, 115.221, 65.320], atol=1e-3)
    # BGR minus the means, from the raw pixel
    r, g, b = images[0, 0, 0].astype(np.float32)
    np.testing.assert_array_equal(x[0, 0, 0], [b - np.float32(103.939), g - np.float32(116.779),
                                               r - np.float32(123.68)])


def test_uint8_gives_float32_and_float_is_changed_in_place_as_in_keras(images):
    original = images.copy()
    out = preprocess_input(images)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(images, original)              # uint8: a new array
    floats = images.astype(np.float32)
    out = preprocess_input(floats)
    assert np.shares_memory(out, floats)                         # float: in place ...
    np.testing.assert_array_equal(floats, out[..., ::-1])        # ... left in RGB order
    single = preprocess_input(images[2])                         # one image, any batch size
    np.testing.assert_array_equal(single, preprocess_input(images)[2])
    np.testing.assert_array_equal(preprocess_input(images[:1])[0], preprocess_input(images[0]))
    assert preprocess_input(images.astype(np.float64)).dtype == np.float64


def test_tf_and_torch_modes():
    x = np.array([[[0, 127.5, 255]]], np.float32)
    np.testing.assert_allclose(preprocess_input(x.copy(), mode="tf"), [[[-1, 0, 1]]])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(preprocess_input(x.copy(), mode="torch"),
                               [[(np.array([0, 0.5, 1]) - mean) / std]], rtol=1e-6)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "float16"])
def test_matches_keras(images, mode, data_format, dtype):
    theirs = _keras_imagenet_utils()
    x = images.astype(dtype)
    if data_format == "channels_first":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for batch in (x, x[1]):
        a, b = batch.copy(), batch.copy()
        ours = preprocess_input(a, data_format=data_format, mode=mode)
        ref = theirs.preprocess_input(b, data_format=data_format, mode=mode)
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(a, b)             # the input changed as Keras changes it


def test_preprocess_errors():
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="Expected mode to be one of `caffe`, `tf` or `torch`"):
        preprocess_input(x, mode="imagenet")
    with pytest.raises(ValueError, match="Received: data_format=nhwc"):
        preprocess_input(x, data_format="nhwc")
    with pytest.raises(ValueError, match=r"3 color channels.*x.shape=\(2, 4, 4, 1\)"):
        preprocess_input(np.zeros((2, 4, 4, 1)))


# ---------------------------------------------------------------- decode_predictions
@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """Keras's class index file in a temporary KERAS_HOME/models, the in-process cache empty
    and the network cut off: anything that tries to download fails the test."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(fixture("imagenet_class_index.json"), models)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(imagenet_utils, "_class_index", None)

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in this test")
    monkeypatch.setattr(downloads, "urlopen", offline)
    return tmp_path


def test_decode_predictions_on_the_resnet50_fixture(keras_home):
    preds = np.load(fixture("resnet50_pred.npy"))
    decoded = decode_predictions(preds, top=5)
    assert len(decoded) == 4 and all(len(row) == 5 for row in decoded)
    assert [name for _, name, _ in decoded[0]] == ["llama", "joystick", "soap_dispenser",
                                                   "diamondback", "bib"]
    assert decoded[0][0][:2] == ("n02437616", "llama")
    for row, pred in zip(decoded, preds):
        scores = [s for _, _, s in row]
        assert scores == sorted(scores, reverse=True)
        assert scores == list(np.sort(pred)[::-1][:5])
        assert all(isinstance(s, np.float32) for s in scores)
    assert [r[1] for r in decode_predictions(preds[1:2], top=3)[0]] == ["llama", "joystick",
                                                                         "bib"]


def test_decode_predictions_known_rows_and_top(keras_home):
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [0, 999, 355]] = [0.2, 0.3, 0.5]
    preds[1, 208] = 1.0
    decoded = decode_predictions(preds, top=3)
    assert decoded[0] == [("n02437616", "llama", np.float32(0.5)),
                          ("n15075141", "toilet_tissue", np.float32(0.3)),
                          ("n01440764", "tench", np.float32(0.2))]
    assert decoded[1][0] == ("n02099712", "Labrador_retriever", np.float32(1.0))
    assert len(decode_predictions(preds, top=1000)[0]) == 1000
    assert len(decode_predictions(preds, top=5000)[0]) == 1000


def test_decode_predictions_matches_keras(keras_home, monkeypatch):
    theirs = _keras_imagenet_utils()
    with open(fixture("imagenet_class_index.json")) as f:
        monkeypatch.setattr(theirs, "CLASS_INDEX", json.load(f))    # Keras offline, too
    preds = np.load(fixture("resnet50_pred.npy"))
    ties = np.full((1, 1000), 0.001, np.float32)                    # equal scores: same order
    for p, top in [(preds, 5), (preds, 1), (ties, 4)]:
        assert decode_predictions(p, top=top) == theirs.decode_predictions(p, top=top)


def test_class_index_is_cached_in_process(keras_home):
    preds = np.eye(1000, dtype=np.float32)[:2]
    first = decode_predictions(preds, top=1)
    os.remove(keras_home / "models" / "imagenet_class_index.json")
    assert decode_predictions(preds, top=1) == first == [[("n01440764", "tench", 1.0)],
                                                         [("n01443537", "goldfish", 1.0)]]


def test_decode_predictions_errors(keras_home):
    for shape in [(2, 10), (1000,), (1, 1000, 1)]:
        with pytest.raises(ValueError) as info:
            decode_predictions(np.zeros(shape))
        assert str(info.value) == (
            "`decode_predictions` expects a batch of predictions (i.e. a 2D array of shape "
            f"(samples, 1000)). Received array with shape: {shape}")
    with pytest.raises(ValueError, match="top"):
        decode_predictions(np.zeros((1, 1000)), top=0)


def test_missing_class_index_offline_says_where_to_put_it(keras_home):
    target = keras_home / "models" / "imagenet_class_index.json"
    target.write_text("{}")             # the wrong file: its hash does not match
    with pytest.raises(downloads.DownloadError) as info:
        decode_predictions(np.zeros((1, 1000)))
    msg = str(info.value)
    assert imagenet_utils.CLASS_INDEX_PATH in msg and f"place it at {target}" in msg
    assert "c2c37ea517e94d9795004a39431a14cb" in msg
