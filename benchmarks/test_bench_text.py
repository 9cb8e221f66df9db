"""A Conv1D text classifier (issue 18's speed section), per system: Embedding(20,000, 128) on
sequences of 200 token ids, Conv1D(128, 5, relu), GlobalMaxPooling1D, Dense(1, sigmoid);
binary crossentropy, Adam lr 1e-3, batch 32, accuracy tracked.

The data are synthetic (no download): IMDB-sized vocabulary and length, random token ids
in [1, 20,000) with each sequence's tail padded with 0, labels from whether a few "positive"
ids outnumber "negative" ones. One round is one fit(epochs=1) over TEXT_SAMPLES sequences
(300 steps); the report scales it to an IMDB epoch of 25,000 (×25000/9600).

fastnn and Keras run the same script (text_model / text_epoch, `import fastnn as keras` the
only difference: integer (int32) inputs, no float cast). PyTorch runs the loop a PyTorch user
writes: nn.Embedding, nn.Conv1d on (N, C, L) (the embedding output transposed), max over
time, nn.Linear to a logit and BCEWithLogitsLoss, torch.optim.Adam, per-epoch randperm.
The ids read `text_conv1d-system`, e.g. `-k "text and fastnn"`."""
import importlib

import numpy as np
import pytest
import workloads as wl

VOCAB, STEPS, DIM, FILTERS, KERNEL = 20000, 200, 128, 128, 5
TEXT_SAMPLES = 9600         # 300 steps of 32
IMDB_EPOCH = 25000          # the report's epoch: IMDB's training set


def text_data(n=TEXT_SAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, (n, STEPS), dtype=np.int64).astype(np.int32)
    lengths = rng.integers(STEPS // 4, STEPS + 1, n)
    x[np.arange(STEPS)[None, :] >= lengths[:, None]] = 0
    good = np.isin(x, np.arange(1, 200)).sum(1)
    bad = np.isin(x, np.arange(200, 400)).sum(1)
    return x, (good > bad).astype(np.float32)


def text_model(keras):
    model = keras.Sequential([
        keras.Input(shape=(STEPS,), dtype="int32"),
        keras.layers.Embedding(VOCAB, DIM),
        keras.layers.Conv1D(FILTERS, KERNEL, activation="relu"),
        keras.layers.GlobalMaxPooling1D(),
        keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def text_epoch(keras, x, y):
    model = text_model(keras)
    return lambda: model.fit(x, y, batch_size=wl.BATCH, epochs=1, verbose=0)


def torch_text_epoch(x, y):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, DIM)
            self.conv = nn.Conv1d(DIM, FILTERS, KERNEL)
            self.out = nn.Linear(FILTERS, 1)

        def forward(self, ids):
            h = torch.relu(self.conv(self.embed(ids).transpose(1, 2)))
            return self.out(h.amax(dim=2)).squeeze(1)

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    X, Y = torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y)

    def epoch():
        model.train()
        perm = torch.randperm(len(X))
        total, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for i in range(0, len(X), wl.BATCH):
            idx = perm[i:i + wl.BATCH]
            xb, yb = X[idx], Y[idx]
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            with torch.no_grad():
                total += loss * len(idx)
                correct += ((logits > 0).float() == yb).sum()
        return total.item() / len(X), correct.item() / len(X)
    return epoch


def _fastnn(x, y, info):
    import fastnn
    fastnn.utils.set_random_seed(0)
    info.update(version=fastnn.__version__, threads=fastnn.get_num_threads())
    return text_epoch(fastnn, x, y)


def _torch(x, y, info):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    info.update(version=torch.__version__, threads=torch.get_num_threads())
    return torch_text_epoch(x, y)


def _keras(x, y, info):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    backend = keras.backend.backend()
    info.update(version=keras.__version__, backend=backend,
                backend_version=importlib.import_module(backend).__version__)
    return text_epoch(keras, x, y)


SYSTEMS = {"fastnn": _fastnn, "torch": _torch, "keras": _keras}


@pytest.mark.parametrize("system", SYSTEMS)
def test_train_text(benchmark, rounds, samples_cap, system):
    x, y = text_data()
    x, y = x[:samples_cap], y[:samples_cap]
    benchmark.group = (f"text_conv1d: Embedding({VOCAB}, {DIM}) on {STEPS} ids, "
                       f"Conv1D({FILTERS}, {KERNEL}, relu), GlobalMaxPooling1D, "
                       f"Dense(1, sigmoid); {len(x)} sequences at batch {wl.BATCH}")
    benchmark.extra_info.update(workload="text_conv1d", system=system, samples=len(x),
                                epoch_samples=IMDB_EPOCH)
    epoch = SYSTEMS[system](x, y, benchmark.extra_info)
    benchmark.pedantic(epoch, rounds=rounds, warmup_rounds=1, iterations=1)
