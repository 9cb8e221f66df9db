"""`keras.applications.resnet50`: ResNet50 and its ImageNet pre- and post-processing."""
from .resnet import ResNet50  # noqa: F401
