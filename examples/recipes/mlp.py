"""A multilayer perceptron: the smallest useful recipe.

Works on any input shape (it flattens the record). Everything but the model comes from
the default loop: Adam, cross-entropy, no augmentation, logits as predictions.
"""

import math

from torch import nn

HYPERPARAMETERS = {"epochs": 3, "batch_size": 128, "lr": 1e-3}


def build_model(schema):
    inputs = math.prod(schema.input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, schema.num_classes),
    )
