"""Keras applications: pretrained models and their pre- and post-processing."""
