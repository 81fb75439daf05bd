"""The book's model (§8.1): one LSTM layer over one-hot characters, then a softmax."""
from __future__ import annotations

import keras


def one_hot(vocab_size: int) -> keras.layers.Layer:
    """The book's one-hot input as a frozen identity embedding: the same numbers, computed inside
    the model from ids, and loadable in Keras safe mode."""
    return keras.layers.Embedding(vocab_size, vocab_size, embeddings_initializer="identity", trainable=False,
                                  name="one_hot")


def build(vocab_size: int, units: int, sequence: bool = False) -> keras.Model:
    """`sequence`: predict after every position, (batch, time, vocab), for training on all
    targets; the same weights as the model that predicts after the last one."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    hidden = keras.layers.LSTM(units, return_sequences=sequence, name="lstm")(one_hot(vocab_size)(ids))
    probs = keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(hidden)
    return keras.Model(ids, probs, name="lstm")
