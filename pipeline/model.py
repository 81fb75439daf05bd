"""Model builders, one per family, chosen by `model.name`. Each takes plain values and returns a
compiled-ready `keras.Model` mapping a batch of character-id windows (batch, time) to the
next-character distribution (batch, vocab). Ids go in, so no one-hot tensor is ever stored.
`load` reads a trained model back, with the vocabulary and maxlen saved beside it."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras


class ModelError(ValueError):
    """A trained model folder is missing, incomplete or unreadable."""


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


def load(folder: Path | str) -> tuple[keras.Model, dict]:
    """The model in `folder` (model.keras, loaded in Keras safe mode: no code from the file runs)
    and its meta.json (vocab, maxlen, lowercase, config, MLflow run), as the train stage wrote them."""
    folder = Path(folder)
    model_file, meta_file = folder / "model.keras", folder / "meta.json"
    for f in (model_file, meta_file):
        if not f.is_file():
            raise ModelError(f"{f}: not found; train a model first (`dvc repro`), or name another folder")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        vocab, maxlen = meta["vocab"], int(meta["maxlen"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{meta_file}: not a model description ({type(e).__name__}: {e})") from None
    if not zipfile.is_zipfile(model_file):  # Keras would say "File not found", which misleads
        raise ModelError(f"{model_file}: not a Keras model file (not a complete zip archive: corrupted or truncated?)")
    try:
        model = keras.saving.load_model(model_file, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - zip, HDF5 and deserialisation errors all mean "unreadable"
        raise ModelError(f"{model_file}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    vocab_size = model.output_shape[-1]
    if vocab_size != len(vocab):
        raise ModelError(f"{model_file}: predicts {vocab_size} characters but {meta_file} lists {len(vocab)}")
    return model, {**meta, "maxlen": maxlen}
