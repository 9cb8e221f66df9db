"""`python -m fastnn`: train the classic 784-128-64-10 MLP on MNIST and plot its history.

Uses the full MNIST set when it can be found ($FASTNN_DATA_DIR, the cache, or a download) and the
sample bundled with fastnn otherwise, and says which."""
import argparse
import time

import fastnn as keras
from fastnn.datasets import mnist
from fastnn.layers import Dense, Input
from fastnn.utils import plot_history


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn", description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plot", default="fastnn_mnist.png", help="where to save the plot")
    parser.add_argument("--sample", action="store_true", help="use the bundled sample only")
    args = parser.parse_args(argv)


    if args.sample:
        data, source = mnist.load_sample(), "sample"
    else:
        data, source = mnist.load_data_or_sample()
    (x_train, y_train), (x_test, y_test) = data
    print(f"MNIST: {'full set' if source == 'full' else 'bundled sample (full set not found)'}"
          f", {len(x_train)} training and {len(x_test)} test digits")
    x_train = x_train.reshape(-1, 784) / 255.0
    x_test = x_test.reshape(-1, 784) / 255.0

    model = keras.Sequential([
        Input(shape=(784,)),
        Dense(128, activation="relu"),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.summary()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_split=0.1)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"Trained {args.epochs} epochs in {seconds:.1f} s")
    print(f"Test accuracy: {accuracy:.4f} (loss {loss:.4f})")
    try:
        plot_history(history, args.plot)
        print(f"Saved the loss/accuracy plot to {args.plot}")
    except ImportError as exc:
        print(f"No plot: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
