"""`keras.applications.resnet50`: ResNet50 and its ImageNet pre- and post-processing.

    python -m fastnn.applications.resnet50 IMAGE [IMAGE ...] [--top 3] [--weights PATH]

prints the top classes of each image (Keras's ImageNet weights are downloaded on first use
and cached in ~/.keras/models)."""
import argparse
import sys

import numpy as np

from .. import images
from .imagenet_utils import decode_predictions, preprocess_input
from .resnet import ResNet50

__all__ = ["ResNet50", "decode_predictions", "preprocess_input"]


def classify(paths, weights="imagenet", top=3):
    """[(path, [(wnid, name, score), ...]), ...]: each image padded to a square (keeping its
    aspect ratio), resized to 224x224, preprocessed and classified in one batch."""
    batch = np.stack([images.resize(images.img_to_array(images.load_img(path)), (224, 224),
                                    pad_to_aspect_ratio=True) for path in paths])
    model = ResNet50(weights=weights)
    preds = model.predict(preprocess_input(batch), verbose=0)
    return list(zip(paths, decode_predictions(preds, top=top)))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn.applications.resnet50",
                                     description="Classify images with ResNet-50 (ImageNet).")
    parser.add_argument("images", nargs="+", help="image files (anything Pillow reads)")
    parser.add_argument("--top", type=int, default=3, help="classes to print per image")
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' (downloaded once) or a weights file")
    args = parser.parse_args(argv)
    for path, classes in classify(args.images, args.weights, args.top):
        print(f"{path}:")
        for rank, (wnid, name, score) in enumerate(classes, 1):
            print(f"  {rank}. {name} ({wnid}) {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
