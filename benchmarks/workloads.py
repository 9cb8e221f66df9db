"""What the benchmarks run, shared by the pytest-benchmark suite and report.py: the MNIST loader,
the workloads (two MLPs and the Keras tutorial CNN; the graph workloads of issue 15: a deep
functional chain, a residual MLP and a user-written Layer subclass), the one Keras script per
network (run by fastnn and by Keras 3), the PyTorch loop, the GEMM shapes / FLOP counts of
training, and Keras's ResNet-50 (issue 16) in torch.nn with its FLOPs per image. Nothing here
imports a framework at module level, so report.py can use it without paying for (or being
broken by) any of them."""
import gzip
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32
N_TRAIN = 60000

# name -> input shape, Dense layer sizes (the first is the flattened input) and activations,
# the conv layer as (image side, kernel side, filters) if any, optimizer, learning rate, and the
# training samples of one timed round (the first `samples` images, one fit(epochs=1) over them).
WORKLOADS = {
    "mlp_adam": dict(input=(784,), sizes=(784, 128, 64, 10), acts=("relu", "relu", "softmax"),
                     opt="adam", lr=1e-3, samples=N_TRAIN),
    "mlp_sgd": dict(input=(784,), sizes=(784, 10, 10), acts=("sigmoid", "softmax"),
                    opt="sgd", lr=0.01, samples=N_TRAIN),
    # The CNN is timed on 300 steps (9,600 images); the report scales it to a 60k epoch.
    # Its script and torch module are spelled out in keras_model / torch_model.
    "cnn": dict(input=(28, 28, 1), conv=(28, 3, 64), sizes=(13 * 13 * 64, 200, 100, 10),
                opt="sgd", lr=0.05, samples=300 * BATCH),
}

# The graph workloads (issue 15: per-node overhead and custom layers), each timed like the CNN on
# 300 steps (one fit(epochs=1) over the first 9,600 images), Adam lr 1e-3. `variants` maps each
# way of writing the network to the systems that time it:
# - deep_mlp: a 20-layer Dense(64, relu) chain as a functional model; fastnn also times it as a
#   Sequential (the functional chain should take the same fused path: ratio ~1).
# - resnet_mlp: 10 residual blocks h = h + Dense(64)(Dense(64, relu)(h)), functional.
# - custom_dense: mlp_adam's network with its two hidden Dense layers as a user's
#   keras.layers.Layer subclass (add_weight + keras.ops), and with the built-in Dense.
# PyTorch runs the equivalent torch.nn module for each (torch_model).
GRAPH_STEPS = 300
GRAPH_WORKLOADS = {
    "deep_mlp": dict(input=(784,), net="784-64x20(relu)-10(softmax)", opt="adam", lr=1e-3,
                     samples=GRAPH_STEPS * BATCH,
                     variants={"functional": ("fastnn", "torch", "keras"),
                               "sequential": ("fastnn",)}),
    "resnet_mlp": dict(input=(784,), net="784-64(relu)-10x[64(relu)-64-add]-10(softmax)",
                       opt="adam", lr=1e-3, samples=GRAPH_STEPS * BATCH,
                       variants={"functional": ("fastnn", "torch", "keras")}),
    "custom_dense": dict(input=(784,), net="784-128(relu)-64(relu)-10(softmax)", opt="adam",
                         lr=1e-3, samples=GRAPH_STEPS * BATCH,
                         variants={"custom": ("fastnn", "torch", "keras"),
                                   "builtin": ("fastnn", "torch", "keras")}),
}


def spec(name):
    """A workload's entry, seed (WORKLOADS) or graph (GRAPH_WORKLOADS)."""
    return WORKLOADS[name] if name in WORKLOADS else GRAPH_WORKLOADS[name]


def describe(name):
    w = spec(name)
    if "net" in w:
        return f"{w['net']} {w['opt'].upper()} b{BATCH}"
    if "conv" in w:
        _, k, filters = w["conv"]
        net = f"conv{k}x{k}x{filters}-maxpool-" + "-".join(f"BN-{s}" for s in w["sizes"][1:])
    else:
        net = "-".join(map(str, w["sizes"]))
    return f"{net} {w['opt'].upper()} b{BATCH}"


def timed(name):
    """What one timed round is, in words."""
    samples = spec(name)["samples"]
    return "60k epoch" if samples == N_TRAIN else f"{samples // BATCH} steps"


def epoch_scale(name):
    """Factor from one timed round to a 60k-sample epoch (1 for the MLPs, 1875/300 for the CNN
    and the graph workloads)."""
    return N_TRAIN / spec(name)["samples"]


# ---------------------------------------------------------------- data
def data_dir():
    """FASTNN_DATA_DIR, else the project's shared/ checkout beside the repository."""
    for d in (os.environ.get("FASTNN_DATA_DIR"),
              os.path.join(REPO, "..", "shared", "data", "mnist")):
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


def workload_data(name, x, y):
    """A workload's timed samples as views of the loaded set (no copy): x (n, 784) for the MLPs,
    (n, 28, 28, 1) channels-last for the CNN, as a Keras user feeds them."""
    w = spec(name)
    n = w["samples"]
    return x[:n].reshape((n,) + w["input"]), y[:n]


# ---------------------------------------------------------------- the three systems
def keras_model(keras, name, variant=None):
    """The Keras script; `keras` is either `import keras` or `import fastnn as keras`.
    `variant` picks how a graph workload is written (GRAPH_WORKLOADS[name]["variants"])."""
    w = spec(name)
    layers = keras.layers
    if name in GRAPH_WORKLOADS:
        model = _graph_keras_model(keras, name, variant)
    elif name == "cnn":   # the classic Keras tutorial CNN, written as its users write it
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.BatchNormalization(),
            layers.Dense(200, activation="selu", kernel_initializer="lecun_normal"),
            layers.BatchNormalization(),
            layers.Dense(100, activation="selu", kernel_initializer="lecun_normal"),
            layers.BatchNormalization(),
            layers.Dense(10, activation="softmax"),
        ])
    else:
        model = keras.Sequential([keras.Input(shape=w["input"])] + [
            layers.Dense(units, activation=act) for units, act in zip(w["sizes"][1:], w["acts"])])
    opt_class = keras.optimizers.Adam if w["opt"] == "adam" else keras.optimizers.SGD
    opt = opt_class(learning_rate=w["lr"])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _graph_keras_model(keras, name, variant):
    """The graph workloads, written as a Keras user writes them (functional API, Layer
    subclass); the same code builds the fastnn and the Keras model."""
    layers = keras.layers
    if variant not in GRAPH_WORKLOADS[name]["variants"]:
        raise ValueError(f"{name}: no variant {variant!r}")
    if name == "deep_mlp" and variant == "sequential":
        return keras.Sequential([keras.Input(shape=(784,))] +
                                [layers.Dense(64, activation="relu") for _ in range(20)] +
                                [layers.Dense(10, activation="softmax")])
    if name == "deep_mlp":
        inputs = keras.Input(shape=(784,))
        h = inputs
        for _ in range(20):
            h = layers.Dense(64, activation="relu")(h)
        outputs = layers.Dense(10, activation="softmax")(h)
        return keras.Model(inputs, outputs)
    if name == "resnet_mlp":
        inputs = keras.Input(shape=(784,))
        h = layers.Dense(64, activation="relu")(inputs)
        for _ in range(10):
            r = layers.Dense(64, activation="relu")(h)
            r = layers.Dense(64)(r)
            h = layers.add([h, r])
        outputs = layers.Dense(10, activation="softmax")(h)
        return keras.Model(inputs, outputs)
    # custom_dense: mlp_adam's network, its hidden layers the user's layer or the built-in one
    if variant == "custom":
        hidden = _relu_dense_class(keras)
    else:
        def hidden(units):
            return layers.Dense(units, activation="relu")
    return keras.Sequential([keras.Input(shape=(784,)), hidden(128), hidden(64),
                             layers.Dense(10, activation="softmax")])


def _relu_dense_class(keras):
    """A Dense + relu layer as the Keras guide writes a custom layer: weights from add_weight in
    build(), call() in keras.ops (fastnn.ops under fastnn, differentiated by its tape)."""
    ops = keras.ops

    class ReluDense(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                          initializer="glorot_uniform", name="kernel")
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

        def call(self, inputs):
            return ops.relu(ops.matmul(inputs, self.kernel) + self.bias)

        def compute_output_shape(self, input_shape):
            return tuple(input_shape[:-1]) + (self.units,)

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    return ReluDense


def keras_epoch(keras, name, x, y, variant=None):
    """Build + compile (untimed); the returned callable is one timed round: one epoch over x."""
    model = keras_model(keras, name, variant)
    return lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


def torch_model(name, variant=None):
    """The same network as a PyTorch user writes it, with logits out (CrossEntropyLoss does the
    softmax). The CNN is NCHW; its BatchNorm1d layers get Keras' epsilon and momentum."""
    from torch import nn
    if name in GRAPH_WORKLOADS:
        return _graph_torch_model(name, variant)
    w = WORKLOADS[name]
    if name == "cnn":
        bn = dict(eps=1e-3, momentum=0.01)
        return nn.Sequential(
            nn.Conv2d(1, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.BatchNorm1d(10816, **bn), nn.Linear(10816, 200), nn.SELU(),
            nn.BatchNorm1d(200, **bn), nn.Linear(200, 100), nn.SELU(),
            nn.BatchNorm1d(100, **bn), nn.Linear(100, 10))
    mods = []
    for fan_in, fan_out, act in zip(w["sizes"], w["sizes"][1:], w["acts"]):
        mods.append(nn.Linear(fan_in, fan_out))
        if act != "softmax":
            mods.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[act]())
    return nn.Sequential(*mods)


def _graph_torch_model(name, variant):
    """The graph workloads as torch.nn modules: the deep chain as nn.Sequential, the residual
    blocks as a small nn.Module, the custom layer as an nn.Module with its own Parameters and
    forward (torch's default initializers elsewhere)."""
    import torch
    from torch import nn
    if variant not in GRAPH_WORKLOADS[name]["variants"]:
        raise ValueError(f"{name}: no variant {variant!r}")
    if name == "deep_mlp":
        mods = [nn.Linear(784, 64), nn.ReLU()]
        for _ in range(19):
            mods += [nn.Linear(64, 64), nn.ReLU()]
        return nn.Sequential(*mods, nn.Linear(64, 10))
    if name == "resnet_mlp":
        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

            def forward(self, h):
                return h + self.fc2(torch.relu(self.fc1(h)))

        return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), *[Block(64) for _ in range(10)],
                             nn.Linear(64, 10))
    if variant == "builtin":
        return torch_model("mlp_adam")

    class ReluDense(nn.Module):
        def __init__(self, fan_in, units):
            super().__init__()
            self.kernel = nn.Parameter(nn.init.xavier_uniform_(torch.empty(fan_in, units)))
            self.bias = nn.Parameter(torch.zeros(units))

        def forward(self, x):
            return torch.relu(x @ self.kernel + self.bias)

    return nn.Sequential(ReluDense(784, 128), ReluDense(128, 64), nn.Linear(64, 10))


def torch_epoch(name, x, y, device="cpu", variant=None):
    """The PyTorch user's loop: CrossEntropyLoss, torch.optim, manual batching over a per-epoch
    randperm; loss and accuracy are accumulated as Keras' fit(metrics=['accuracy']) does.
    Channels-last images are transposed to NCHW once, untimed. device="cuda": the model and
    the whole data set on the GPU (moved once, untimed), read back once per epoch."""
    import torch
    from torch import nn
    w = spec(name)
    model = torch_model(name, variant).to(device)
    opt_class = torch.optim.Adam if w["opt"] == "adam" else torch.optim.SGD
    opt = opt_class(model.parameters(), lr=w["lr"])
    loss_fn = nn.CrossEntropyLoss()
    if x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    X = torch.from_numpy(x).to(device)
    Y = torch.from_numpy(y.astype(np.int64)).to(device)

    def epoch():
        model.train()
        perm = torch.randperm(len(X), device=device)
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
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
    kernels. Conv (valid, stride 1) as im2col: forward cols(B*oh*ow, k*k) @ W(k*k, filters) and
    weight grad cols^T @ dy; it is the first layer, so it has no input grad. Dense: forward x@W,
    weight grad x^T@dy, input grad dy@W^T, which the first Dense of the MLPs skips but the CNN's
    needs (the BatchNormalization and conv layers before it train)."""
    w = WORKLOADS[name]
    out = []
    if "conv" in w:
        side, k, filters = w["conv"]
        pixels = batch * (side - k + 1) ** 2
        out += [(pixels, k * k, filters, False, False), (k * k, pixels, filters, True, False)]
    for i, (fan_in, fan_out) in enumerate(zip(w["sizes"], w["sizes"][1:])):
        out.append((batch, fan_in, fan_out, False, False))
        out.append((fan_in, batch, fan_out, True, False))
        if i > 0 or "conv" in w:
            out.append((batch, fan_out, fan_in, False, True))
    return out


def gemm_label(m, k, n, ta=False, tb=False):
    return f"{m}x{k}x{n}" + (" (A^T)" if ta else "") + (" (B^T)" if tb else "")


def train_gemm_flops(name, n=N_TRAIN):
    """Training GEMM FLOPs over n samples (default: one 60k epoch), 2*m*k*n per GEMM above.
    Every term is linear in the batch size, so count per sample."""
    return n * sum(2 * m * k * n_ for m, k, n_, _, _ in train_gemms(name, batch=1))


BIG = (2048, 2048, 2048, False, False)


def sgemm_shapes():
    """Every distinct GEMM of the workloads, then the large square one."""
    shapes = []
    for name in WORKLOADS:
        shapes += [s for s in train_gemms(name) if s not in shapes]
    return shapes + [BIG]


def shape_users(shape):
    """The workloads that train with this GEMM shape."""
    return [name for name in WORKLOADS if shape in train_gemms(name)]


# ---------------------------------------------------------------- ResNet-50 (issue 16)
# Keras's ResNet-50 v1: per stage (filters, blocks, stride of the first block); each block's
# output has 4 * filters channels.
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
RESNET50_PARAMS = 25_636_712   # keras.applications.ResNet50().count_params()


def resnet50_convs(side=224):
    """Every conv of Keras's ResNet-50, then its Dense, as (in channels, out channels, kernel,
    stride, output side), in Keras's layer order."""
    s = (side + 6 - 7) // 2 + 1          # conv1: ZeroPadding2D(3) + 7x7 stride-2 valid conv
    convs = [(3, 64, 7, 2, s)]
    s = (s + 2 - 3) // 2 + 1             # pool1: ZeroPadding2D(1) + 3x3 stride-2 max pool
    cin = 64
    for filters, blocks, stride in RESNET50_STAGES:
        for b in range(blocks):
            st = stride if b == 0 else 1
            s = (s - 1) // st + 1        # Keras strides the 1x1 convs, not the 3x3
            if b == 0:                   # the _0_conv shortcut
                convs.append((cin, 4 * filters, 1, st, s))
            convs += [(cin, filters, 1, st, s), (filters, filters, 3, 1, s),
                      (filters, 4 * filters, 1, 1, s)]
            cin = 4 * filters
    return convs + [(cin, 1000, 1, 1, 1)]  # predictions: Dense after global average pooling


def resnet50_flops(side=224):
    """FLOPs of one image's forward pass: 2 * multiply-adds of every conv and the Dense
    (7.72 GFLOP at 224x224; BN, pooling, activations and adds not counted)."""
    return sum(2 * ci * co * k * k * s * s for ci, co, k, _, s in resnet50_convs(side))


def resnet50_torch():
    """Keras's ResNet-50 (applications.ResNet50) in plain torch.nn, NCHW, softmax out (the local
    torchvision wheel does not load against the CPU torch). Unlike torchvision's v1.5, the
    stride is on each stage's first 1x1 conv; conv biases on and BN eps 1.001e-5 as in Keras."""
    from torch import nn

    def conv_bn(cin, cout, k, stride=1):
        return [nn.Conv2d(cin, cout, k, stride, padding=k // 2), nn.BatchNorm2d(cout, eps=1.001e-5)]

    class Block(nn.Module):
        def __init__(self, cin, filters, stride, shortcut):
            super().__init__()
            self.shortcut = (nn.Sequential(*conv_bn(cin, 4 * filters, 1, stride)) if shortcut
                             else None)
            self.body = nn.Sequential(*conv_bn(cin, filters, 1, stride), nn.ReLU(),
                                      *conv_bn(filters, filters, 3), nn.ReLU(),
                                      *conv_bn(filters, 4 * filters, 1))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu((x if self.shortcut is None else self.shortcut(x)) + self.body(x))

    # conv1's padding 3 is Keras's ZeroPadding2D(3) + valid conv; after a ReLU, max pool's
    # -inf padding equals pool1's ZeroPadding2D(1)
    mods, cin = [*conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)], 64
    for filters, blocks, stride in RESNET50_STAGES:
        for b in range(blocks):
            mods.append(Block(cin, filters, stride if b == 0 else 1, shortcut=b == 0))
            cin = 4 * filters
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000),
                         nn.Softmax(dim=1))


def keras_param_count(module):
    """A torch module's parameter count as Keras counts it: BatchNorm's running mean and
    variance are (non-trainable) weights there."""
    from torch import nn
    return sum(p.numel() for p in module.parameters()) + sum(
        m.running_mean.numel() + m.running_var.numel() for m in module.modules()
        if isinstance(m, nn.BatchNorm2d))


# ---------------------------------------------------------------- sequences (issue 18)
# The LSTM text classifier: int32 word ids (batch 32, 200 steps) -> Embedding(20,000,
# 128) -> LSTM(128) -> Dense(1, sigmoid), Adam lr 1e-3, binary crossentropy; one timed round is
# one epoch of LSTM_SAMPLES synthetic sequences (32 steps). The same Keras script runs on
# fastnn and Keras; PyTorch runs nn.Embedding + nn.LSTM(batch_first=True) + Linear with
# BCEWithLogitsLoss, the loop torch_epoch runs for the MNIST workloads.
LSTM_SPEC = dict(steps=200, features=128, units=128, vocab=20000, samples=32 * BATCH)


def lstm_data(samples=None):
    """Word ids and a label that needs the whole sequence (whether most ids lie in the lower
    half of the vocabulary), fixed seed."""
    n = samples or LSTM_SPEC["samples"]
    rng = np.random.default_rng(0)
    x = rng.integers(1, LSTM_SPEC["vocab"], (n, LSTM_SPEC["steps"])).astype(np.int32)
    y = ((x < LSTM_SPEC["vocab"] // 2).mean(axis=1) > 0.5).astype(np.float32)
    return x, y


def lstm_gemm_flops(samples=None):
    """Training GEMM FLOPs of an LSTM epoch: per sequence, the input projection (2·T·4U·D) and
    the recurrent products (2·T·4U·U) forward, and each twice backward (the input and state
    gradients, the two weight gradients): 6·T·4U·(D + U), 161 GFLOP for the 1,024 sequences."""
    spec = LSTM_SPEC
    n = samples or spec["samples"]
    return n * 6 * spec["steps"] * 4 * spec["units"] * (spec["features"] + spec["units"])


def lstm_keras_model(keras):
    """The Keras script; `keras` is either `import keras` or `import fastnn as keras`."""
    model = keras.Sequential([
        keras.Input((LSTM_SPEC["steps"],), dtype="int32"),
        keras.layers.Embedding(LSTM_SPEC["vocab"], LSTM_SPEC["features"]),
        keras.layers.LSTM(LSTM_SPEC["units"]),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    return model


def lstm_torch_epoch(model, opt, x, y, batch=BATCH):
    """One epoch of the PyTorch loop: a randperm, manual batches, loss and accuracy summed."""
    import torch
    loss_fn = torch.nn.BCEWithLogitsLoss()
    perm = torch.randperm(len(x))
    total, correct = 0.0, 0
    model.train()
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        correct += int(((logits > 0).float() == yb).sum())
    return total / len(x), correct / len(x)


def lstm_torch_model():
    import torch

    class LSTMClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(LSTM_SPEC["vocab"], LSTM_SPEC["features"])
            self.lstm = torch.nn.LSTM(LSTM_SPEC["features"], LSTM_SPEC["units"],
                                      batch_first=True)
            self.out = torch.nn.Linear(LSTM_SPEC["units"], 1)

        def forward(self, x):
            seq, _ = self.lstm(self.embed(x))
            return self.out(seq[:, -1])
    return LSTMClassifier()
