"""Model families, one module each, chosen by `model.name` (conf/model/<name>.yaml):

- lstm: the book's LSTM(units) over one-hot characters (lstm.py);
- stacked_lstm, gru: layers of LSTM or GRU with dropout between them and an optional trainable
  embedding (rnn.py), char-rnn's recipe;
- conv1d: a causal, dilated 1D convnet with gated residual blocks, WaveNet-style (conv1d.py).

Each builder takes plain values and returns a compile-ready `keras.Model` mapping a batch of
character-id windows (batch, time) to the next-character distribution (batch, vocab). Ids go in,
so no one-hot tensor is ever stored. `load` reads a trained model back, with the vocabulary and
maxlen saved beside it."""
from __future__ import annotations

import json
import zipfile
from functools import partial
from pathlib import Path

import keras

from pipeline.text.model import conv1d, lstm, rnn


class ModelError(ValueError):
    """A trained model folder is missing, incomplete or unreadable."""


# model.name -> builder. Each family lives in its own module; the builders take the model
# section's keys (all but `name`) as keyword arguments.
MODELS = {"lstm": lstm.build, "stacked_lstm": partial(rnn.build, cell="lstm"), "gru": partial(rnn.build, cell="gru"),
          "conv1d": conv1d.build}



@keras.saving.register_keras_serializable(package="genlab")
class Parallel(keras.Model):
    """`model` run on `parts` consecutive slices of each batch, its outputs concatenated in order:
    the numbers of `model` on the whole batch (to float rounding; dropout draws a mask per slice),
    its weights and so its mean loss, but as `parts` independent recurrent loops. On a CPU the
    train stage runs them on separate cores: a loop's per-step ops are too small for TensorFlow to
    spread over two cores (measured: one intra-op thread trains the book's model about as fast as
    two), so one loop per core is what keeps both busy. A batch smaller than `parts` (an epoch's
    last) is padded with rows of id 0 whose outputs are dropped: Keras's recurrent layers fail on
    an empty slice. `fused` (the book's model only): each slice's LSTM runs as the compiled CPU
    loops of `pipeline.text.lstm_cpu` on the layer's own weights instead of Keras's LSTM, with the
    same numbers to float rounding."""

    def __init__(self, model: keras.Model, parts: int, fused: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.parts, self.fused = model, parts, fused
        if fused and (reason := why_not_fusable(model)):
            raise ValueError(reason)

    def call(self, ids, training=None):
        ops = keras.ops
        n, time = ops.shape(ids)[0], ops.shape(ids)[1]
        ids = ops.concatenate([ids, ops.zeros((ops.maximum(self.parts - n, 0), time), dtype=ids.dtype)], axis=0)
        rows = ops.maximum(n, self.parts)
        cuts = [rows * k // self.parts for k in range(self.parts + 1)]
        run = partial(self._fused, keep=training is not False) if self.fused else partial(self.inner, training=training)
        return ops.concatenate([run(ids[a:b]) for a, b in zip(cuts, cuts[1:])], axis=0)[:n]

    def _fused(self, ids, keep: bool):
        from pipeline.text.lstm_cpu import lstm_last

        cell = self.inner.get_layer("lstm").cell
        # The input is the embedding's row for each id: the identity's (one-hot) in the book's
        # model, so `table @ kernel` is the kernel itself, but any table gives Keras's numbers.
        kernel = keras.ops.matmul(self.inner.get_layer("one_hot").embeddings, cell.kernel)
        return self.inner.get_layer("next_char")(lstm_last(ids, kernel, cell.recurrent_kernel, cell.bias, keep))

    def get_config(self):
        return {"name": self.name, "model": keras.saving.serialize_keras_object(self.inner), "parts": self.parts,
                "fused": self.fused}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("model")), **config)


def why_not_fusable(model: keras.Model) -> str | None:
    """None if the fused CPU loops (`pipeline.text.lstm_cpu`) can run `model`, else why not: they run the
    book's model only, one LSTM with Keras's default activations and no dropout over the one-hot
    input, predicting after the last position."""
    names = [type(la).__name__ for la in model.layers]
    names = names if [la.name for la in model.layers][1:] == ["one_hot", "lstm", "next_char"] else [*names, "(renamed)"]
    lstm = next((la for la in model.layers if la.name == "lstm"), None)
    if (names != ["InputLayer", "Embedding", "LSTM", "Dense"] or lstm.return_sequences or lstm.go_backwards
            or lstm.activation.__name__ != "tanh" or lstm.recurrent_activation.__name__ != "sigmoid"
            or lstm.dropout or lstm.recurrent_dropout or not lstm.use_bias or lstm.cell.implementation != 2):
        details = "" if lstm is None else (f" (LSTM activation {lstm.activation.__name__}, recurrent "
                                           f"{lstm.recurrent_activation.__name__}, dropout {lstm.dropout:g}, "
                                           f"recurrent_dropout {lstm.recurrent_dropout:g})")
        return (f"model {model.name!r}: the fused LSTM runs the book's model (one-hot ids, one LSTM with default "
                f"activations and no dropout, a softmax after the last position), not {names}{details}")
    return None


def unwrap(model: keras.Model) -> keras.Model:
    """The model itself: the one a `Parallel` training model runs, or `model` if it is not one."""
    return model.inner if isinstance(model, Parallel) else model


def build(vocab_size: int, name: str, sequence: bool = False, **keys) -> keras.Model:
    """The `name` family's model for a vocabulary of `vocab_size` characters. `sequence`: its twin
    that predicts after every position, (batch, time, vocab), with the same weights, for training
    on all targets (`train.targets: all`)."""
    return MODELS[name](vocab_size, sequence=sequence, **keys)


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
