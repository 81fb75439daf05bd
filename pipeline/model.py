"""Model builders, one per family, chosen by `model.name`. Each takes plain values and returns a
compiled-ready `keras.Model` mapping a batch of character-id windows (batch, time) to the
next-character distribution (batch, vocab). Ids go in, so no one-hot tensor is ever stored."""
from __future__ import annotations

import keras


def build_lstm(vocab_size: int, units: int) -> keras.Model:
    """The book's model (§8.1): LSTM(units) over one-hot characters, Dense softmax.
    The one-hot encoding is a frozen identity embedding: the same numbers as the book's
    one-hot input, computed inside the model, and loadable in Keras safe mode."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    one_hot = keras.layers.Embedding(vocab_size, vocab_size, embeddings_initializer="identity",
                                     trainable=False, name="one_hot")(ids)
    hidden = keras.layers.LSTM(units, name="lstm")(one_hot)
    probs = keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(hidden)
    return keras.Model(ids, probs, name="lstm")


MODELS = {"lstm": build_lstm}
