"""The text train stage's own Keras callbacks and per-epoch work, beside the shared epoch-end
machinery (`pipeline.epochs`): the held-out loss of a model trained on all targets, and the text
generated after every epoch."""
from __future__ import annotations

import math

from pipeline.text.vectorize import decode

LN2 = math.log(2.0)


def samples(t, vocab, val_ids, maxlen):
    """The `on_epoch` work of `pipeline.epochs.epoch_end`: text from a held-out window at each of
    `train.epoch_samples.temperatures`, logged to MLflow; returns the middle temperature's start."""
    import mlflow

    from pipeline.text.generator import for_model, held_out_prompt
    from pipeline.text.model import unwrap

    temps = [float(x) for x in t.epoch_samples.temperatures]

    def on_epoch(n, model, rng) -> str:
        prompt = held_out_prompt(val_ids, maxlen, rng)
        out = for_model(unwrap(model), maxlen).generate(prompt, temps, t.epoch_samples.length, rng, mode=t.epoch_samples.mode)
        seed_text = decode(prompt, vocab)
        for temp, ids in zip(temps, out, strict=True):
            mlflow.log_text(f"--- seed: {seed_text!r}\n{seed_text}{decode(ids, vocab)}\n", f"samples/epoch_{n:03d}/temperature_{temp}.txt")
        return f"  T={temps[len(temps) // 2]}: {decode(out[len(temps) // 2][:60], vocab)!r}"

    return on_epoch


def bits(logs: dict) -> dict:
    """The epoch's losses in bits per character, the figure char-rnn and nanoGPT report."""
    return {"bpc": float(logs["loss"]) / LN2, "val_bpc": float(logs["val_loss"]) / LN2}


def held_out(model, val_ds):
    """The callback that sets the epoch's val_loss to `model`'s loss on `val_ds`, after copying the
    trained weights into it: `model` is the last-position twin of a model trained on all targets."""
    import keras

    model.compile(loss="sparse_categorical_crossentropy")

    class HeldOut(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.set_weights(self.model.get_weights())
            logs["val_loss"] = float(model.evaluate(val_ds, verbose=0))

    return HeldOut()
