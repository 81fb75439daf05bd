"""REFERENCE ONLY, NOT genlab: the book's approach to §8.1 of "Deep Learning with Python"
(character-level LSTM text generation), written from the book's description so that
`bench/compare.py` can measure genlab against it in the same run.

Faithful to the book where it matters for speed and memory:
- vectorize: Python loops cut every `step`-th window into a list of strings, then fill a one-hot
  bool tensor x of shape (windows, maxlen, chars) and y of shape (windows, chars);
- model: LSTM(128) on the one-hot windows, Dense softmax, RMSprop(lr=0.01), categorical
  cross-entropy, `model.fit(x, y, batch_size=128, epochs=1)` on numpy arrays;
- generation: for every character, re-one-hot the last `maxlen` characters and call
  `model.predict`, then sample with the temperature.
Only the Keras 3 spellings differ (keras.Input, learning_rate=, predict(verbose=0)), and Keras is
imported where the model is built, so that the vectorize measurement does not start TensorFlow
(10 s a process on the benchmark's machine, outside the timed work either way).
"""
from __future__ import annotations

import numpy as np


def vectorize(text: str, maxlen: int = 60, step: int = 3):
    sentences = []
    next_chars = []
    for i in range(0, len(text) - maxlen, step):
        sentences.append(text[i: i + maxlen])
        next_chars.append(text[i + maxlen])
    chars = sorted(list(set(text)))
    char_indices = dict((char, chars.index(char)) for char in chars)
    x = np.zeros((len(sentences), maxlen, len(chars)), dtype=bool)
    y = np.zeros((len(sentences), len(chars)), dtype=bool)
    for i, sentence in enumerate(sentences):
        for t, char in enumerate(sentence):
            x[i, t, char_indices[char]] = 1
        y[i, char_indices[next_chars[i]]] = 1
    return x, y, chars, char_indices


def build_model(maxlen: int, n_chars: int, units: int = 128):
    import keras

    model = keras.Sequential([keras.Input((maxlen, n_chars)), keras.layers.LSTM(units),
                              keras.layers.Dense(n_chars, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=0.01))
    return model


def sample(preds, temperature: float = 1.0) -> int:
    preds = np.asarray(preds).astype("float64")
    preds = np.log(preds) / temperature
    exp_preds = np.exp(preds)
    preds = exp_preds / np.sum(exp_preds)
    probas = np.random.multinomial(1, preds, 1)
    return int(np.argmax(probas))


def generate(model, seed_text: str, chars, char_indices, maxlen: int, length: int, temperature: float) -> str:
    generated_text = seed_text
    out = []
    for _ in range(length):
        sampled = np.zeros((1, maxlen, len(chars)))
        for t, char in enumerate(generated_text):
            sampled[0, t, char_indices[char]] = 1.0
        preds = model.predict(sampled, verbose=0)[0]
        next_char = chars[sample(preds, temperature)]
        generated_text = (generated_text + next_char)[1:]
        out.append(next_char)
    return "".join(out)
