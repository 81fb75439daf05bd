"""genlab's VAE against keras-io's VAE example (bench/vae_reference.py, re-stated as it runs),
measured in the same run on the same data: MNIST's 60,000 training digits, the same epochs.

    python bench/vae.py                  # 5 epochs each, scored on the 10,000 test digits with k=50
    python bench/vae.py --epochs 30      # the book's recipe
    python bench/vae.py --json           # the figures as one JSON object
    python bench/vae.py --seeds 3        # 3 initialisations (seeds 1337, 1338, 1339): mean and spread per side
    python bench/vae.py --same-randomness   # the reference fed genlab's digit order and posterior noise

Each side runs in a fresh process of its own, from the same initial weights (the reference's,
drawn from the seed: the two models have the same layers, and a VAE's loss after a few epochs
varies with its initialisation by more than any difference between the two implementations). The
reference is the example's fit(); genlab's is its
real train stage (`pipeline.vae.train.run`, in a throwaway folder): every epoch also scores the
10,000 test digits, inside the epoch time it reports, and then logs two pictures to MLflow and
writes a checkpoint (timed apart, as `after_epoch_seconds`). The epoch time is the median over the
epochs after the first (which traces the graph). Besides the epoch ratio (genlab's epoch with its
test pass against the reference's, which has none), the bench gives the ratio of the training
alone (genlab's epoch less its test pass) and each side's arithmetic rate: the model's
multiply-adds counted from its layers' shapes, x3 for a training step (forward, and the gradients
of the inputs and the weights), against a float32 matrix product's rate on the same machine, so
that a ratio near 1 can be told apart from a slow side.
Both trained models are then scored by the same code here, with the same posterior samples: the
negative ELBO and the IWAE bound (k samples) on the test digits, in nats per digit; the decoders'
probabilities are clipped to [1e-7, 1 - 1e-7] as Keras's binary cross-entropy clips them.
Needs mnist.npz in $GENLAB_DATA_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EPS = 1e-7


def _digits():
    from pipeline.vae.fetch import read

    path = Path(os.environ.get("GENLAB_DATA_DIR", "/nonexistent")) / "mnist.npz"
    if not path.is_file():
        sys.exit("error: no mnist.npz: set GENLAB_DATA_DIR to a folder holding it")
    arrays = read(path)
    return (arrays["x_train"].astype(np.float32)[..., None] / 255.0, arrays["x_test"].astype(np.float32)[..., None] / 255.0)


def score(encode, decode_probs, x: np.ndarray, k: int, seed: int = 0, batch: int = 20) -> tuple[float, float]:
    """Mean negative ELBO and IWAE bound over `x` (nats per digit), the same posterior samples for
    any model of the same latent size: eps from `seed`."""
    rng = np.random.default_rng(seed)
    elbo, iwae = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].astype(np.float64)
        mean, log_var = (np.asarray(a, np.float64) for a in encode(x[i:i + batch]))
        n, d = mean.shape
        eps = rng.standard_normal((n, k, d))
        z = mean[:, None] + np.exp(0.5 * log_var)[:, None] * eps
        p = np.clip(np.asarray(decode_probs(z.reshape(n * k, d).astype(np.float32)), np.float64), EPS, 1 - EPS).reshape(n, k, -1)
        flat = xb.reshape(n, 1, -1)
        log_px = (flat * np.log(p) + (1 - flat) * np.log(1 - p)).sum(axis=2)
        log_w = log_px - 0.5 * (z ** 2).sum(axis=2) + 0.5 * (eps ** 2 + log_var[:, None]).sum(axis=2)
        kl = -0.5 * (1 + log_var - mean ** 2 - np.exp(log_var)).sum(axis=1)
        elbo.append(kl - log_px.mean(axis=1))
        top = log_w.max(axis=1, keepdims=True)
        iwae.append(-(top[:, 0] + np.log(np.exp(log_w - top).mean(axis=1))))
    return float(np.concatenate(elbo).mean()), float(np.concatenate(iwae).mean())


SEED = 1337


def _initial_weights(keras, seed: int) -> list:
    """The reference's initial weights for `seed`: encoder then decoder, in layer order (genlab's
    VAE lists the same shapes in the same order)."""
    from bench import vae_reference as ref

    keras.utils.set_random_seed(seed)
    encoder, decoder = ref.build()
    return encoder.get_weights() + decoder.get_weights()


def flops_per_digit(model) -> int:
    """Floating-point operations of one forward pass of one digit through `model`'s encoder and
    decoder (2 per multiply-add of the convolutions, transposed convolutions and dense layers;
    activations and the loss are a rounding error beside them)."""
    import keras

    total = 0
    for part in (model.encoder, model.decoder):
        for layer in part.layers:
            if isinstance(layer, keras.layers.Conv2DTranspose):
                (_, h, w, c_in), k = layer.input.shape, layer.kernel.shape
                total += 2 * h * w * c_in * k[0] * k[1] * k[2]
            elif isinstance(layer, keras.layers.Conv2D):
                (_, h, w, c_out), k = layer.output.shape, layer.kernel.shape
                total += 2 * h * w * c_out * k[0] * k[1] * k[2]
            elif isinstance(layer, keras.layers.Dense):
                total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def matmul_gflops(seconds: float = 3.0) -> float:
    """This machine's float32 rate on a 1024 x 1024 matrix product (numpy's BLAS, all cores)."""
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    a @ a
    started, n = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a @ a
        n += 1
    return n * 2 * 1024 ** 3 / (time.perf_counter() - started) / 1e9


def _reference_fed_like_genlab(ref, keras, x_train, epochs: int, seed: int, timer):
    """The reference's model and train_step, fed what genlab's train stage feeds its own: each
    epoch's order of the digits (`np.random.default_rng([seed, epoch])`) and its posterior noise
    (the Sampling layer's generator set at each epoch's start to the state genlab's `reseed` sets).
    With equal initial weights, what then still differs is the loss's arithmetic alone: keras-io's
    binary cross-entropy on clipped sigmoid outputs against genlab's on the logits."""
    from keras import ops

    encoder, decoder = ref.build()
    vae = ref.VAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam())
    sampling = next(layer for layer in encoder.layers if isinstance(layer, ref.Sampling))
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x_train))
        state = sampling.seed_generator.state
        state.assign(ops.convert_to_tensor([seed, (epoch + 1) * 1_000_000], dtype=state.dtype))
        vae.fit(x_train[order], initial_epoch=epoch, epochs=epoch + 1, batch_size=128, shuffle=False, verbose=0, callbacks=[timer])
    return vae


def child(side: str, epochs: int, k: int, seed: int, same_randomness: bool = False) -> dict:
    from pipeline.machine import import_tensorflow, peak_rss_mib

    import_tensorflow()
    import keras

    x_train, x_test = _digits()
    initial = _initial_weights(keras, seed)
    if side == "reference":
        from bench import vae_reference as ref

        class Timer(keras.callbacks.Callback):
            seconds, started = [], 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)
                self.loss = float(logs["loss"])

        keras.utils.set_random_seed(seed)  # what _initial_weights drew: the same weights again
        timer = Timer()
        if same_randomness:
            vae = _reference_fed_like_genlab(ref, keras, x_train, epochs, seed, timer)
        else:
            vae = ref.train(x_train, epochs, [timer])
        seconds, loss = timer.seconds, timer.loss
        training, extra = seconds, {}  # the reference's epoch is all training
        encode = lambda x: [keras.ops.convert_to_numpy(a) for a in vae.encoder(x)[:2]]  # noqa: E731
        decode = lambda z: keras.ops.convert_to_numpy(vae.decoder(z))  # noqa: E731
    else:
        from pipeline import config, epochs as shared_epochs
        from pipeline.vae import fetch, model, train

        assert [w.shape for w in model.VAE().get_weights()] == [w.shape for w in initial]

        class FromReference(model.VAE):  # the stage's model, started from the reference's weights
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.set_weights(initial)

        model.VAE = FromReference
        test_pass, after_epoch = [], []  # seconds of each epoch's test pass and of its pictures and checkpoint
        evaluate = keras.Model.evaluate

        def timed_evaluate(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return evaluate(self, *args, **kwargs)
            finally:
                test_pass.append(time.perf_counter() - started)

        keras.Model.evaluate = timed_evaluate
        epoch_end = shared_epochs.epoch_end

        def timed_epoch_end(t, state, *args, **kwargs):
            callback = epoch_end(t, state, *args, **kwargs)
            row_and_after = callback.on_epoch_end

            def on_epoch_end(epoch, logs=None):
                row_and_after(epoch, logs)
                after_epoch.append(time.perf_counter() - callback.started - state["history"][-1]["seconds"])

            callback.on_epoch_end = on_epoch_end
            return callback

        shared_epochs.epoch_end = timed_epoch_end

        with tempfile.TemporaryDirectory() as work:
            os.chdir(work)
            cfg = config.compose([f"vae.train.epochs={epochs}", "vae.evaluate.iwae_samples=1", "vae.evaluate.images=10", f"seed={seed}",
                                  f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db"])
            fetch.run(cfg)
            result = train.run(cfg)
            history = [line.split(",") for line in Path("metrics/vae/history.csv").read_text().splitlines()]
            column = history[0].index("seconds")
            seconds = [float(r[column]) for r in history[1:]]
            loss = float(history[-1][history[0].index("loss")])
            vae = keras.saving.load_model("models/vae/vae.keras", custom_objects={"FromReference": model.VAE}, safe_mode=True)
            os.chdir(ROOT)
        assert result["epochs"] == epochs and len(test_pass) == len(after_epoch) == epochs
        training = [total - test for total, test in zip(seconds, test_pass)]
        median_test = statistics.median(test_pass[1:] or test_pass)
        extra = {"test_pass_seconds": test_pass, "median_test_pass_seconds": median_test,
                 "after_epoch_seconds": after_epoch, "median_after_epoch_seconds": statistics.median(after_epoch[1:] or after_epoch),
                 "test_pass_gflops": flops_per_digit(vae) * len(x_test) / median_test / 1e9}
        encode = lambda x: [keras.ops.convert_to_numpy(a) for a in vae.encoder(x)]  # noqa: E731
        decode = lambda z: keras.ops.convert_to_numpy(vae.decode(z))  # noqa: E731
    started = time.perf_counter()
    neg_elbo, neg_iwae = score(encode, decode, x_test, k)
    median_training, flops = statistics.median(training[1:] or training), flops_per_digit(vae)
    return {"epoch_seconds": seconds, "median_epoch_seconds": statistics.median(seconds[1:] or seconds),
            "median_training_seconds": median_training, "flops_per_digit": flops,
            "training_gflops": 3 * flops * len(x_train) / median_training / 1e9, **extra,
            "train_loss_last_epoch": loss, "test_neg_elbo": neg_elbo, "test_iwae_nll": neg_iwae,
            "score_seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib()}


def _pair(epochs: int, k: int, seed: int, same_randomness: bool) -> dict:
    """Both sides for one seed, each in a fresh process."""
    out = {}
    for side in ("reference", "genlab"):
        proc = subprocess.run([sys.executable, __file__, "--child", side, "--epochs", str(epochs), "--k", str(k), "--seed", str(seed),
                               *(["--same-randomness"] if same_randomness else [])],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            sys.exit(f"error: the {side} run (seed {seed}) failed:\n{proc.stderr[-3000:]}")
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"seed {seed}, {side}: test -ELBO {out[side]['test_neg_elbo']:.2f}, "
              f"{out[side]['median_epoch_seconds']:.1f} s/epoch", file=sys.stderr, flush=True)
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--k", type=int, default=50, help="posterior samples per test digit (IWAE's k)")
    parser.add_argument("--seeds", type=int, default=1, help="initialisations to run, from seed 1337 on (mean and spread per side)")
    parser.add_argument("--same-randomness", action="store_true",
                        help="feed the reference genlab's order of the digits and its posterior noise, epoch by epoch")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("reference", "genlab"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.k, args.seed, args.same_randomness)))
        return
    started = time.perf_counter()
    matmul = matmul_gflops()
    runs = {seed: _pair(args.epochs, args.k, seed, args.same_randomness) for seed in range(SEED, SEED + args.seeds)}
    per = {side: {key: [runs[s][side][key] for s in runs] for key in runs[SEED][side] if not isinstance(runs[SEED][side][key], list)}
           for side in ("reference", "genlab")}
    speeds = [runs[s]["reference"]["median_epoch_seconds"] / runs[s]["genlab"]["median_epoch_seconds"] for s in runs]
    speed = statistics.median(speeds)
    training_speeds = [runs[s]["reference"]["median_epoch_seconds"] / runs[s]["genlab"]["median_training_seconds"] for s in runs]
    training_speed = statistics.median(training_speeds)
    ref_elbo, gen_elbo = _mean_sd(per["reference"]["test_neg_elbo"]), _mean_sd(per["genlab"]["test_neg_elbo"])
    report = {"epochs": args.epochs, "k": args.k, "seeds": list(runs), "same_randomness": args.same_randomness, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "runs": {str(s): r for s, r in runs.items()}, "epoch_speed_ratio": speed, "epoch_speed_ratios": speeds,
              "training_speed_ratio": training_speed, "training_speed_ratios": training_speeds, "matmul_gflops": matmul,
              "elbo_gap_mean": gen_elbo[0] - ref_elbo[0], "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    n = len(runs)
    print(f"VAE, {args.epochs} epochs on MNIST's 60,000 training digits; scored on its 10,000 test digits, k={args.k}; "
          f"{n} seed{'s' if n > 1 else ''} ({', '.join(map(str, runs))}){': mean ± sd' if n > 1 else ''}")
    if args.same_randomness:
        print("the reference fed genlab's order of the digits and posterior noise, epoch by epoch")
    print(f"{'figure':40s} {'keras-io':>16s} {'genlab':>16s} {'ratio':>7s}  target")

    def cell(values):
        m, sd = _mean_sd(values)
        return f"{m:8.2f} ± {sd:5.2f}" if n > 1 else f"{m:16.2f}"

    rows = [("epoch seconds (median after the first)", "median_epoch_seconds", speed, ">= 1 (genlab as fast)", speed >= 1),
            ("training alone: genlab's epoch less its test pass", "median_training_seconds", training_speed, "report", None),
            ("training GFLOP/s (x3 forward multiply-adds)", "training_gflops", None, f"report (matmul: {matmul:.0f})", None),
            ("test negative ELBO (nats/digit)", "test_neg_elbo", None, "genlab <= keras-io (mean)", gen_elbo[0] <= ref_elbo[0]),
            ("test IWAE bound (nats/digit)", "test_iwae_nll", None, "report", None),
            ("train loss, last epoch", "train_loss_last_epoch", None, "report", None),
            ("peak RSS (MiB)", "peak_rss_mib", None, "report", None)]
    for name, key, ratio, target, met in rows:
        r = f"{ratio:7.2f}" if ratio is not None else " " * 7
        mark = "" if met is None else ("  met" if met else "  NOT met")
        print(f"{name:40s} {cell(per['reference'][key]):>16s} {cell(per['genlab'][key]):>16s} {r}  {target}{mark}")
    g = per["genlab"]
    print(f"genlab's test pass (10,000 digits, forward): {cell(g['median_test_pass_seconds']).strip()} s at "
          f"{cell(g['test_pass_gflops']).strip()} GFLOP/s; its pictures and checkpoint after each epoch: "
          f"{cell(g['median_after_epoch_seconds']).strip()} s")
    if n > 1:
        print("per seed, test -ELBO keras-io / genlab: " + "; ".join(
            f"{s}: {runs[s]['reference']['test_neg_elbo']:.2f} / {runs[s]['genlab']['test_neg_elbo']:.2f}" for s in runs))
    print(f"(wall time {report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
