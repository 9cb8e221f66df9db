"""What the benchmarks run, shared by the pytest-benchmark suite and report.py: the MNIST loader,
the two MLP workloads, the one Keras script (run by fastnn and by Keras 3), the PyTorch loop, and
the GEMM shapes / FLOP counts of a training epoch. Nothing here imports a framework at module
level, so report.py can use it without paying for (or being broken by) any of them."""
import gzip
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32
N_TRAIN = 60000

# name -> layer sizes, activations (one per Dense), optimizer, learning rate
WORKLOADS = {
    "mlp_adam": dict(sizes=(784, 128, 64, 10), acts=("relu", "relu", "softmax"),
                     opt="adam", lr=1e-3),
    "mlp_sgd": dict(sizes=(784, 10, 10), acts=("sigmoid", "softmax"), opt="sgd", lr=0.01),
}


def describe(name):
    w = WORKLOADS[name]
    return f"{'-'.join(map(str, w['sizes']))} {w['opt'].upper()} b{BATCH}"


# ---------------------------------------------------------------- data
def data_dir():
    """FASTNN_DATA_DIR, else the project's shared/ checkout beside the repository."""
    for d in (os.environ.get("FASTNN_DATA_DIR"), os.path.join(REPO, "..", "shared", "data", "mnist")):
        if d and os.path.exists(os.path.join(d, "train-images-idx3-ubyte.gz")):
            return os.path.abspath(d)
    return None


def _idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist_train(directory):
    """(x float32 (60000, 784) in [0, 1], y uint8 (60000,)) from the gzipped IDX files."""
    x = _idx(os.path.join(directory, "train-images-idx3-ubyte.gz")).reshape(-1, 784)
    y = _idx(os.path.join(directory, "train-labels-idx1-ubyte.gz"))
    return x.astype(np.float32) / np.float32(255), y


# ---------------------------------------------------------------- the three systems
def keras_model(keras, name):
    """The Keras script; `keras` is either `import keras` or `import fastnn as keras`."""
    w = WORKLOADS[name]
    model = keras.Sequential([keras.Input(shape=(w["sizes"][0],))] + [
        keras.layers.Dense(units, activation=act) for units, act in zip(w["sizes"][1:], w["acts"])])
    opt = (keras.optimizers.Adam if w["opt"] == "adam" else keras.optimizers.SGD)(learning_rate=w["lr"])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def keras_epoch(keras, name, x, y):
    """Build + compile (untimed); the returned callable is one timed epoch."""
    model = keras_model(keras, name)
    return lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def torch_epoch(name, x, y):
    """The same network as a PyTorch user writes it: nn.Sequential with logits out and
    CrossEntropyLoss (= softmax + sparse CE), torch.optim, manual batching over a per-epoch
    randperm; loss and accuracy are accumulated as Keras' fit(metrics=['accuracy']) does."""
    import torch
    from torch import nn
    w = WORKLOADS[name]
    mods = []
    for i, (fan_in, fan_out, act) in enumerate(zip(w["sizes"], w["sizes"][1:], w["acts"])):
        mods.append(nn.Linear(fan_in, fan_out))
        if act != "softmax":
            mods.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[act]())
    model = nn.Sequential(*mods)
    opt = (torch.optim.Adam if w["opt"] == "adam" else torch.optim.SGD)(model.parameters(), lr=w["lr"])
    loss_fn = nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def epoch():
        model.train()
        perm = torch.randperm(len(X))
        total_loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        for i in range(0, len(X), BATCH):
            idx = perm[i:i + BATCH]
            xb, yb = X[idx], Y[idx]
            opt.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            with torch.no_grad():
                total_loss += loss * len(idx)
                correct += (logits.argmax(1) == yb).sum()
        return total_loss.item() / len(X), correct.item() / len(X)
    return epoch


# ---------------------------------------------------------------- GEMM shapes and FLOPs
def train_gemms(name, batch=BATCH):
    """The GEMMs of one training step as (m, k, n, trans_a, trans_b) with Keras' (in, out)
    kernels: forward x@W, weight grad x^T@dy, input grad dy@W^T (none for the first layer)."""
    sizes = WORKLOADS[name]["sizes"]
    out = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        out.append((batch, fan_in, fan_out, False, False))
        out.append((fan_in, batch, fan_out, True, False))
        if i > 0:
            out.append((batch, fan_out, fan_in, False, True))
    return out


def gemm_label(m, k, n, ta=False, tb=False):
    return f"{m}x{k}x{n}" + (" (A^T)" if ta else "") + (" (B^T)" if tb else "")


def epoch_gemm_flops(name, n=N_TRAIN):
    """Training GEMM FLOPs of one epoch: forward 2*B*in*out per layer, backward twice that, less
    the first layer's input gradient. Every term is linear in the batch size, so count per sample."""
    return n * sum(2 * m * k * n_ for m, k, n_, _, _ in train_gemms(name, batch=1))


BIG = (2048, 2048, 2048, False, False)


def sgemm_shapes():
    """Every distinct GEMM of both workloads, then the large square one."""
    shapes = []
    for name in WORKLOADS:
        shapes += [s for s in train_gemms(name) if s not in shapes]
    return shapes + [BIG]
