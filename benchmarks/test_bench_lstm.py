"""LSTM(128) text classifier training (issue 18): one epoch of workloads.LSTM_SPEC's sequences
per round (batch 32, 200 int32 word ids -> Embedding(20,000, 128) -> LSTM(128) -> Dense(1,
sigmoid), Adam), per system. fastnn
and Keras run the same script (workloads.lstm_keras_model); PyTorch torch.nn.LSTM in its usual
loop (workloads.lstm_torch_epoch), at its default thread count. Ids read `system`, e.g.
`-k fastnn`."""
import importlib
import os

import numpy as np
import pytest
import workloads as wl


def _keras_like(keras, x, y):
    model = wl.lstm_keras_model(keras)

    def run():
        return model.fit(x, y, batch_size=wl.BATCH, epochs=1, verbose=0).history["loss"][-1]
    return run


def _fastnn(x, y, info):
    import fastnn
    fastnn.utils.set_random_seed(0)
    info.update(version=fastnn.__version__, threads=fastnn.get_num_threads())
    return _keras_like(fastnn, x, y)


def _keras(x, y, info):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    backend = keras.backend.backend()
    mod = importlib.import_module(backend)
    threads = (mod.get_num_threads() if backend == "torch"
               else mod.config.threading.get_intra_op_parallelism_threads() or os.cpu_count())
    info.update(version=keras.__version__, backend=backend, backend_version=mod.__version__,
                threads=threads)
    return _keras_like(keras, x, y)


def _torch(x, y, info):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = wl.lstm_torch_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, Y = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y)[:, None]
    info.update(version=torch.__version__, threads=torch.get_num_threads())
    return lambda: wl.lstm_torch_epoch(model, opt, X, Y)[0]


SYSTEMS = {"fastnn": _fastnn, "torch": _torch, "keras": _keras}


@pytest.mark.parametrize("system", SYSTEMS)
def test_lstm_epoch(benchmark, rounds, samples_cap, system):
    x, y = wl.lstm_data(min(wl.LSTM_SPEC["samples"], samples_cap or wl.LSTM_SPEC["samples"]))
    benchmark.group = (f"LSTM({wl.LSTM_SPEC['units']}) epoch of {len(x)} sequences "
                       f"(Embedding {wl.LSTM_SPEC['vocab']} x {wl.LSTM_SPEC['features']}, "
                       f"{wl.LSTM_SPEC['steps']} steps), batch {wl.BATCH}")
    benchmark.extra_info.update(lstm=True, system=system, samples=len(x))
    fn = SYSTEMS[system](x, y, benchmark.extra_info)
    loss = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    assert np.isfinite(loss)
