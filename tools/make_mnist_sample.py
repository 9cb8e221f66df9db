"""Regenerate fastnn/datasets/mnist_sample.npz from the canonical MNIST files.

The sample is the first 4,000 training and the first 1,000 test digits, in their original order
and unchanged (first-N rather than stratified: it stays a plain prefix of the real set, and its
classes are balanced enough, 350 to 444 training digits each). Usage:

    python tools/make_mnist_sample.py ../shared/data/mnist

np.savez_compressed stamps the zip entries with the current time, so a rebuilt file differs from
the committed one byte for byte but holds the same arrays (tests/test_datasets.py checks them
against the full set).
"""
import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from fastnn.datasets import mnist  # noqa: E402  (needs REPO on sys.path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=os.environ.get("FASTNN_DATA_DIR"),
                        help="folder with the IDX files or mnist.npz (default: $FASTNN_DATA_DIR)")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--out",
                        default=os.path.join(REPO, "fastnn", "datasets", mnist.SAMPLE_FILE))
    args = parser.parse_args(argv)

    data = mnist._load_folder(args.data_dir) if args.data_dir else None
    if data is None:
        parser.error(f"no MNIST files in {args.data_dir!r}")
    (x_train, y_train), (x_test, y_test) = data
    if (len(x_train), len(x_test)) != (60000, 10000):
        parser.error(f"expected the full set, got {len(x_train)} + {len(x_test)} digits")
    np.savez_compressed(args.out, x_train=x_train[:args.train], y_train=y_train[:args.train],
                        x_test=x_test[:args.test], y_test=y_test[:args.test])
    print(f"wrote {args.out}: {args.train} training + {args.test} test digits, "
          f"{os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
