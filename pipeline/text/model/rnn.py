"""Stacked recurrent models, char-rnn's recipe: `layers` LSTM or GRU layers of `units`, dropout
between them and before the softmax, over one-hot characters or a trainable embedding.

Dropout sits between layers, never inside the recurrence (`recurrent_dropout` stays 0), and the
activations are Keras's defaults: that keeps each layer on the fused cuDNN kernel on a GPU."""
from __future__ import annotations

import keras

from pipeline.text.model.lstm import one_hot

CELLS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def build(vocab_size: int, cell: str, units: int, layers: int, dropout: float, embedding: int | None,
          sequence: bool = False) -> keras.Model:
    """`embedding`: the size of a trainable character embedding, or None for the book's one-hot input.
    `sequence`: predict after every position (see lstm.build)."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = one_hot(vocab_size)(ids) if embedding is None else keras.layers.Embedding(vocab_size, embedding, name="embedding")(ids)
    for k in range(1, layers + 1):
        x = CELLS[cell](units, return_sequences=sequence or k < layers, name=f"{cell}_{k}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{k}")(x)
    probs = keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(x)
    return keras.Model(ids, probs, name=f"{cell}_x{layers}")
