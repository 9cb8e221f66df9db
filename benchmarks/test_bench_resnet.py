"""ResNet-50 predict on 224x224x3 float32 images (issue 16), per system and batch size: one round
is 16 images, as one predict call of 16 (batch 16) or 16 calls of one image (batch 1).

fastnn and Keras build their applications.ResNet50(weights=None) and call
model.predict(x, batch_size=batch, verbose=0); PyTorch calls the same architecture in torch.nn
(workloads.resnet50_torch) directly, eval mode, under torch.no_grad(). The weights are random
(fixed seeds): the time does not depend on them. The ids read `system-batch`, e.g.
`-k "fastnn"` or `-k "torch and 16"`."""
import gc
import importlib
import os

import numpy as np
import pytest
import workloads as wl

IMAGES = 16
BATCHES = (1, 16)


def _images(n):
    # about the range of preprocess_input's "caffe" output
    return np.random.default_rng(0).uniform(-128, 128, (n, 224, 224, 3)).astype(np.float32)


def _predict_calls(model, x, batch):
    return lambda: [model.predict(x[i:i + batch], batch_size=batch, verbose=0)
                    for i in range(0, len(x), batch)]


def _fastnn(x, batch, info):
    import fastnn
    fastnn.utils.set_random_seed(0)
    model = fastnn.applications.ResNet50(weights=None)
    info.update(version=fastnn.__version__, threads=fastnn.get_num_threads())
    return _predict_calls(model, x, batch)


def _keras(x, batch, info):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    backend = keras.backend.backend()
    mod = importlib.import_module(backend)
    # TF's 0 means its default: one intra-op thread per core
    threads = (mod.get_num_threads() if backend == "torch"
               else mod.config.threading.get_intra_op_parallelism_threads() or os.cpu_count())
    info.update(version=keras.__version__, backend=backend, backend_version=mod.__version__,
                threads=threads)
    return _predict_calls(model, x, batch)


def _torch(x, batch, info):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = wl.resnet50_torch().eval()
    assert wl.keras_param_count(model) == wl.RESNET50_PARAMS
    # NCHW, converted once outside the timing: a torch user's pipeline produces NCHW tensors
    # (the transpose of 16 images is ~1 ms, under 0.1% of a round)
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    info.update(version=torch.__version__, threads=torch.get_num_threads(), layout="NCHW")

    def run():
        with torch.no_grad():
            return [model(X[i:i + batch]).numpy() for i in range(0, len(X), batch)]
    return run


SYSTEMS = {"fastnn": _fastnn, "torch": _torch, "keras": _keras}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("system", SYSTEMS)
def test_resnet50_predict(benchmark, rounds, samples_cap, system, batch):
    gc.collect()   # drop the previous test's model, so the child's peak RSS is one model's
    x = _images(min(IMAGES, samples_cap or IMAGES))
    benchmark.group = f"resnet50 predict, batch {batch}, {len(x)} images per round"
    benchmark.extra_info.update(resnet_batch=batch, system=system, images=len(x),
                                flop_per_image=wl.resnet50_flops())
    fn = SYSTEMS[system](x, batch, benchmark.extra_info)
    out = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    out = np.concatenate(out)
    assert out.shape == (len(x), 1000) and np.isfinite(out).all()
