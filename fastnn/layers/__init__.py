"""Layers with Keras 3's names, arguments, weight shapes and weight order (keras.layers).

The package's modules: `core` (the Layer base class and its contract, dense, convolution,
pooling, normalization, merging, shape, activation and preprocessing layers, Input, Lambda),
`sequence` (Embedding, Masking, the 1-D convolution and pooling layers, TimeDistributed) and
`recurrent` (SimpleRNN, LSTM, GRU, Bidirectional). Both build on `core`, never on this package.
"""
from .core import (activity_loss, activity_penalties, add, added_losses, average, concatenate, dot,
                   drawing_from, forward_pass, get_class, masked_forward, maximum, minimum,
                   multiply, record_activity, subtract, with_activity_gradient, Activation, Add,
                   Average, AveragePooling2D, BatchNormalization, CenterCrop, Concatenate, Conv2D,
                   Conv2DTranspose, ConvPool, Cropping2D, Dense, DepthwiseConv2D, Dot, Dropout, ELU,
                   Flatten, GaussianDropout, GaussianNoise, GlobalAveragePooling2D,
                   GlobalMaxPooling2D, GroupNormalization, Identity, Input, InputLayer, Lambda,
                   Layer, LayerNormalization, LeakyReLU, MaxPooling2D, Maximum, Minimum, Multiply,
                   Normalization, PReLU, Permute, RandomContrast, RandomFlip, RandomRotation,
                   RandomTranslation, RandomZoom, ReLU, RepeatVector, Rescaling, Reshape, Resizing,
                   SeparableConv2D, Softmax, SpatialDropout1D, SpatialDropout2D, Subtract,
                   UpSampling2D, ZeroPadding2D)
from .recurrent import (Bidirectional, GRU, LSTM, SimpleRNN)
from .sequence import (AveragePooling1D, Conv1D, Embedding, GlobalAveragePooling1D,
                       GlobalMaxPooling1D, Masking, MaxPooling1D, TimeDistributed)

__all__ = [
    'Activation', 'Add', 'Average', 'AveragePooling1D', 'AveragePooling2D', 'BatchNormalization',
    'Bidirectional', 'CenterCrop', 'Concatenate', 'Conv1D', 'Conv2D', 'Conv2DTranspose',
    'ConvPool', 'Cropping2D', 'Dense', 'DepthwiseConv2D', 'Dot', 'Dropout', 'ELU', 'Embedding',
    'Flatten', 'GRU', 'GaussianDropout', 'GaussianNoise', 'GlobalAveragePooling1D',
    'GlobalAveragePooling2D', 'GlobalMaxPooling1D', 'GlobalMaxPooling2D', 'GroupNormalization',
    'Identity', 'Input', 'InputLayer', 'LSTM', 'Lambda', 'Layer', 'LayerNormalization',
    'LeakyReLU', 'Masking', 'MaxPooling1D', 'MaxPooling2D', 'Maximum', 'Minimum', 'Multiply',
    'Normalization', 'PReLU', 'Permute', 'RandomContrast', 'RandomFlip', 'RandomRotation',
    'RandomTranslation', 'RandomZoom', 'ReLU', 'RepeatVector', 'Rescaling', 'Reshape', 'Resizing',
    'SeparableConv2D', 'SimpleRNN', 'Softmax', 'SpatialDropout1D', 'SpatialDropout2D', 'Subtract',
    'TimeDistributed', 'UpSampling2D', 'ZeroPadding2D', 'activity_loss', 'activity_penalties',
    'add', 'added_losses', 'average', 'concatenate', 'dot', 'drawing_from', 'forward_pass',
    'get_class', 'masked_forward', 'maximum', 'minimum', 'multiply', 'record_activity', 'subtract',
    'with_activity_gradient'
]
