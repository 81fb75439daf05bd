"""The VAE's book recipe on a GPU machine that has PyTorch and no TensorFlow (the lent `device`
machine): genlab's model (pipeline.vae.model.VAE, its own train_step and test_step) through Keras 3's
torch backend, which shows the model is not tied to TensorFlow, and the figures a 2-core CPU
cannot give in minutes: 30 epochs and the IWAE bound with k = 1000 on all 10,000 test digits.

    KERAS_BACKEND=torch PYTHONPATH=<keras wheels>:. python bench/vae_gpu.py MNIST_NPZ --out OUT [--epochs 30]

Trains on the 60,000 training digits with the train stage's per-epoch order (a permutation from the
seed and the epoch) and noise (`VAE.reseed`), keeps the best test epoch's weights as the stage does,
then bounds -log p(x) on the test set. Writes OUT/vae_gpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("npz")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    import keras
    import torch

    from pipeline.vae.model import VAE

    with np.load(args.npz) as z:
        x_train, x_test = z["x_train"][..., None], z["x_test"][..., None]
    keras.utils.set_random_seed(args.seed)
    model = VAE([32, 64], 16, 2, 1.0, seed=args.seed)
    model.compile(optimizer=keras.optimizers.Adam(0.001))
    history, best, best_weights = [], float("inf"), None
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.reseed(args.seed, epoch + 1)
        order = np.random.default_rng([args.seed, epoch]).permutation(len(x_train))
        logs = model.fit(x_train[order], batch_size=128, validation_data=(x_test,), initial_epoch=epoch, epochs=epoch + 1,
                         shuffle=False, verbose=0).history
        row = {k: float(v[-1]) for k, v in logs.items()}
        row.update(epoch=epoch + 1, seconds=time.perf_counter() - started)
        history.append(row)
        print(json.dumps(row), flush=True)
        if row["val_loss"] < best:
            best, best_weights = row["val_loss"], model.get_weights()
    model.set_weights(best_weights)
    started = time.perf_counter()
    model.reseed(args.seed, 0)
    elbo, iwae = [], []
    for i in range(0, len(x_test), 50):
        e, w = model.bounds(x_test[i:i + 50], args.k)
        elbo.append(keras.ops.convert_to_numpy(e))
        iwae.append(keras.ops.convert_to_numpy(w))
    result = {"backend": keras.backend.backend(), "keras": keras.__version__, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "epochs": args.epochs,
              "history": history, "best_val_loss": best, "best_epoch": 1 + min(range(len(history)), key=lambda i: history[i]["val_loss"]),
              "k": args.k, "test_neg_elbo": float(np.concatenate(elbo).mean()), "test_iwae_nll": float(np.concatenate(iwae).mean()),
              "bound_seconds": time.perf_counter() - started}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "vae_gpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "torch")
    main()
