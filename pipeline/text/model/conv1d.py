"""A causal, dilated 1D convnet (WaveNet-style, van den Oord et al. 2016): gated residual blocks
whose dilations double, so that a few layers see the whole window, and every position is computed
in parallel instead of one character after another as in a recurrent layer.

Each block: tanh(conv) * sigmoid(conv) over causal, dilated convolutions of `kernel_size`, a 1x1
convolution, dropout, added back to the block's input (residual) and to the skip sum. The output
reads the skip sum at the last position. The receptive field is 1 + (kernel_size - 1) * sum(dilations)
characters: the default (2, 1..32) sees 64, the whole book window of 60. `units` is the number
of channels of every layer."""
from __future__ import annotations

import keras

from pipeline.text.model.lstm import one_hot


@keras.saving.register_keras_serializable(package="genlab")
class LastStep(keras.layers.Layer):
    """(batch, time, features) -> (batch, features) at the last position. A named layer, not a
    Lambda, so that the model loads in Keras safe mode."""

    def call(self, x):
        return x[:, -1, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


def build(vocab_size: int, units: int, kernel_size: int, dilations: list[int], dropout: float,
          embedding: int | None, sequence: bool = False) -> keras.Model:
    """`sequence`: predict after every position (see lstm.build): the convnet computes them all anyway."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = one_hot(vocab_size)(ids) if embedding is None else keras.layers.Embedding(vocab_size, embedding, name="embedding")(ids)
    x = keras.layers.Conv1D(units, 1, name="input_proj")(x)
    skips = []
    for k, d in enumerate(dilations, start=1):
        f = keras.layers.Conv1D(units, kernel_size, dilation_rate=d, padding="causal", activation="tanh", name=f"filter_{k}")(x)
        g = keras.layers.Conv1D(units, kernel_size, dilation_rate=d, padding="causal", activation="sigmoid", name=f"gate_{k}")(x)
        h = keras.layers.Conv1D(units, 1, name=f"mix_{k}")(keras.layers.Multiply(name=f"gated_{k}")([f, g]))
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"dropout_{k}")(h)
        x = keras.layers.Add(name=f"residual_{k}")([x, h])
        skips.append(h)
    out = keras.layers.Add(name="skips")(skips) if len(skips) > 1 else skips[0]
    out = keras.layers.Activation("relu", name="relu")(out if sequence else LastStep(name="last_step")(out))
    probs = keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(out)
    return keras.Model(ids, probs, name="conv1d")
