"""Writes keras_next_step.npz: Keras 3's weights after one more training step from each of the
shared fixtures' .keras files (../shared/fixtures/keras), on the fixture's own inputs with
labels arange(8) % 5, so tests/test_keras_files.py checks fastnn's step without Keras.

    KERAS_BACKEND=torch python tests/data/make_keras_next_step.py ../shared/fixtures/keras

Made with Keras 3.15.1 on torch 2.13.0 (CPU). The MLP fixture is left out: its Dropout draws
different random numbers in each framework."""
import os
import sys

import keras
import numpy as np

fixtures = sys.argv[1]
arrays = {}
for name in ("cnn", "functional"):
    model = keras.models.load_model(os.path.join(fixtures, f"{name}.keras"))
    x = np.load(os.path.join(fixtures, f"{name}_x.npy"))
    model.train_on_batch(x, np.arange(len(x)) % 5)
    for i, w in enumerate(model.get_weights()):
        arrays[f"{name}/{i}"] = keras.ops.convert_to_numpy(w)
np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras_next_step.npz"),
         **arrays)
print(f"keras {keras.__version__}, backend {keras.backend.backend()}: {len(arrays)} arrays")
