"""The VAE (§8.4): its losses against their formulas, its bounds, its pictures, what it logs,
bad data files, the divergence guard and resume. Tiny configs (experiment=tiny: 512 training
digits, 2 epochs of a small model), CPU, the data mirror, everything under tmp_path."""
import json
import math
import zipfile

import keras
import mlflow
import numpy as np
import pytest

from pipeline import config
from pipeline.download import FetchError
from pipeline.vae import fetch, sample, train
from pipeline.vae.model import VAE, kl_divergence, reconstruction_nats


def tiny_vae(tmp_path, *overrides):
    return config.compose(["experiment=tiny", "generator=vae", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *overrides])


@pytest.fixture(scope="session")
def vae_trained(tmp_path_factory, data_dir):
    """fetch -> train -> sample once on the tiny config, in a folder the tests only read: (folder, cfg, results)."""
    folder = tmp_path_factory.mktemp("vae")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("GENLAB_DATA_DIR", str(data_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tiny_vae(folder)
        results = {stage.__name__.rsplit(".", 1)[-1]: stage.run(cfg) for stage in (fetch, train, sample)}
    return folder, cfg, results


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_reconstruction_loss_is_the_bernoulli_cross_entropy_summed_over_pixels():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
    x[0, :4, :4] = 0.0  # exact zeros and ones, as MNIST has
    x[1, :4, :4] = 1.0
    logits = rng.normal(scale=4.0, size=(3, 28, 28, 1)).astype(np.float32)
    p = _sigmoid(logits.astype(np.float64))
    expected = -(x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(3, -1).sum(axis=1)
    got = keras.ops.convert_to_numpy(reconstruction_nats(x, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A logit of 30 for a white pixel costs log(1 + e^-30), not the log(0) a saturated sigmoid gives.
    far = np.full((1, 28, 28, 1), 30.0, np.float32)
    assert 0 < float(reconstruction_nats(np.ones_like(far), far)[0]) < 1e-9 * 784 * 10


def test_kl_of_a_known_gaussian():
    """KL(N(mu, sigma^2) || N(0, 1)) = (sigma^2 + mu^2 - 1 - ln sigma^2) / 2 per dimension."""
    mean = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    log_var = np.array([[math.log(4.0), 0.0], [0.0, 0.0]], np.float32)
    expected = [0.5 * (4 + 1 - 1 - math.log(4)) + 0.5 * (1 + 4 - 1 - 0), 0.0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kl_divergence(mean, log_var)), expected, rtol=1e-6, atol=1e-7)


def test_shapes_and_the_beta_weighted_loss_of_a_step():
    model = VAE([4, 8], 8, 3, beta=0.25, seed=1)
    x = np.random.default_rng(1).uniform(size=(5, 28, 28, 1)).astype(np.float32)
    mean, log_var = model.encoder(x)
    assert mean.shape == log_var.shape == (5, 3)
    assert model.decoder(mean).shape == (5, 28, 28, 1)
    assert model(x).shape == (5, 28, 28, 1)
    model.compile(optimizer="adam")
    logs = {k: float(v) for k, v in model.test_step(x).items()}
    assert logs["loss"] == pytest.approx(logs["reconstruction_loss"] + 0.25 * logs["kl_loss"], rel=1e-6)
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_step(x)
    assert set(logs) == {"loss", "reconstruction_loss", "kl_loss"}
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # a step moves the weights


def test_fit_reads_the_batches_in_order_without_the_autotuner_and_trains_as_on_the_array(data_dir):
    """The pipeline `epochs.in_batches` gives fit() (not Keras's own, whose autotuner stalls the end
    of every fit and evaluate) holds the same batches in the same order: the same weights result."""
    import tensorflow as tf

    from pipeline import epochs

    x = fetch.read(data_dir / "mnist.npz")["x_train"][:300, ..., None]
    data, batch = epochs.in_batches(x, 128)
    assert batch is None and not data.options().autotune.enabled and data.options().threading.private_threadpool_size == 1
    got = [b.numpy() for b in data]
    assert [len(b) for b in got] == [128, 128, 44] and np.array_equal(np.concatenate(got), x)
    weights = []
    for fed in ((x, 128), (data, None)):
        keras.utils.set_random_seed(5)
        model = VAE([4], 8, 2, seed=5)
        model.compile(optimizer="adam")
        model.reseed(5, 1)
        model.fit(fed[0], batch_size=fed[1], epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    assert isinstance(data, tf.data.Dataset)
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


def test_the_bounds_are_exact_for_a_posterior_equal_to_the_prior_and_a_decoder_that_ignores_z():
    """Encoder outputs all zero (q = N(0, I) = the prior) and a decoder whose logits are one constant
    c whatever z: every importance weight is p(x|z) = the same number, so -ELBO = -IWAE =
    the cross-entropy of the pixels against sigmoid(c), by hand. With a real posterior the IWAE
    bound is the tighter (lower) one."""
    model = VAE([4, 8], 8, 2, seed=3)
    for layer in model.encoder.layers[-2:]:  # z_mean, z_log_var
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    for layer in model.decoder.layers:
        if layer.weights:
            ws = [np.zeros_like(w) for w in layer.get_weights()]
            if layer.name == "logits":
                ws[1][:] = 0.3
            layer.set_weights(ws)
    x = np.random.default_rng(2).uniform(size=(4, 28, 28, 1)).astype(np.float32)
    p = _sigmoid(0.3)
    by_hand = -(x * math.log(p) + (1 - x) * math.log(1 - p)).reshape(4, -1).sum(axis=1)
    elbo, iwae = (keras.ops.convert_to_numpy(b) for b in model.bounds(x, 50))
    np.testing.assert_allclose(elbo, by_hand, rtol=1e-5)
    np.testing.assert_allclose(iwae, by_hand, rtol=1e-5)

    trained = VAE([4, 8], 8, 2, seed=3)  # random weights: q differs from the prior
    elbo, iwae = (keras.ops.convert_to_numpy(b) for b in trained.bounds(x, 200))
    assert np.all(iwae <= elbo + 1e-3) and np.mean(elbo - iwae) > 0


def test_the_latent_grid_is_the_books_quantile_grid():
    from statistics import NormalDist

    from pipeline.vae.images import quantile_grid

    g = quantile_grid(15)
    assert g.shape == (15, 15, 2)
    assert g[0, 0, 0] == pytest.approx(NormalDist().inv_cdf(0.05), rel=1e-6) and g[0, 0, 1] == pytest.approx(NormalDist().inv_cdf(0.95), rel=1e-6)
    assert g[7, 7] == pytest.approx([0.0, 0.0], abs=1e-6)  # the middle cell is the prior's mode


def test_a_tiny_run_writes_its_pictures_and_they_show_digits(vae_trained):
    """Every PNG of the sample stage is written, of the right size, with its tiles (28 x 28 digits
    with 2-pixel gutters, scaled x2) not one flat colour and not all the same digit."""
    from PIL import Image

    folder, cfg, results = vae_trained
    s = cfg.vae.sample
    sizes = {"latent_grid.png": (s.grid, s.grid), "samples.png": (4, 4), "interpolation.png": (1, s.steps + 2),
             "concept.png": (s.concept_digits, s.steps)}
    for name, (rows, cols) in sizes.items():
        image = np.asarray(Image.open(folder / "samples/vae" / name))
        assert image.shape == ((rows * 30 + 2) * 2, (cols * 30 + 2) * 2), name
        tiles = [image[4 + 60 * r:4 + 60 * r + 56, 4 + 60 * c:4 + 60 * c + 56] for r in range(rows) for c in range(cols)]
        assert all(t.std() > 1 for t in tiles[:1] + tiles[-1:]), f"{name} has a flat tile"
        assert max(np.abs(t.astype(int) - tiles[0]).max() for t in tiles) > 0, f"{name}: every tile is the same image"
    assert set(results["sample"]["files"]) == set(sizes)
    assert 0 <= json.loads((folder / "metrics/vae/sample.json").read_text())["concept_reached"] <= 1


def test_a_tiny_run_logs_params_epochs_pictures_and_bounds_to_mlflow(vae_trained):
    folder, cfg, results = vae_trained
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name("genlab-vae")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == results["train"]["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "2" and run.data.params["train.beta"] == "1.0"
    assert "vectorize.maxlen" not in run.data.params  # the text generator's keys are not the VAE's params
    for metric in ("loss", "val_loss", "reconstruction_loss", "kl_loss", "val_reconstruction_loss", "val_kl_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2], metric
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert history == pytest.approx([float(r.split(",")[2]) for r in (folder / "metrics/vae/history.csv").read_text().splitlines()[1:]])
    bounds = json.loads((folder / "metrics/vae/train.json").read_text())
    assert run.data.metrics["test_neg_elbo"] == pytest.approx(bounds["test_neg_elbo"])
    assert run.data.metrics["test_iwae_nll"] == pytest.approx(bounds["test_iwae_nll"])
    assert bounds["test_iwae_nll"] < bounds["test_neg_elbo"]
    assert bounds["iwae_samples"] == cfg.vae.evaluate.iwae_samples
    paths = {a.path for d in ("latent", "reconstructions", "model", "sample") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"latent/epoch_001.png", "latent/epoch_002.png", "reconstructions/epoch_002.png", "model/vae.keras",
            "sample/latent_grid.png", "sample/concept.png"} <= paths


def test_the_exported_model_reproduces_the_best_epochs_test_loss(vae_trained):
    """vae.keras holds the best epoch's weights: its test loss is the val_loss history.csv
    records for that epoch, up to the sampling noise of z (the epochs' losses differ by far more)."""
    folder, cfg, results = vae_trained
    model = keras.saving.load_model(folder / "models/vae/vae.keras", safe_mode=True)
    _, x_test, _ = train.load_digits(folder / "data/vae/mnist.npz", None, cfg.vae.train.test_digits)
    best = results["train"]["best_epoch"]
    model.reseed(cfg.seed, best)
    model.compile(optimizer="adam")
    rows = (folder / "metrics/vae/history.csv").read_text().splitlines()
    recorded = float(rows[best].split(",")[2])
    got = float(model.evaluate(x_test, batch_size=cfg.vae.train.batch_size, verbose=0, return_dict=True)["loss"])
    assert got == pytest.approx(recorded, rel=0.02)


def _written(path, data):
    (path.write_text if isinstance(data, str) else path.write_bytes)(data)
    return path


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _mnist_like(data_dir, **changes):
    with np.load(data_dir / "mnist.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("case, make, message", [
    ("not an npz", lambda d, p: _written(p, "x_train,y_train\n1,2\n"), r"not a readable \.npz archive.*expected MNIST's x_train \(60000, 28, 28\) uint8"),
    ("truncated", lambda d, p: _written(p, (d / "mnist.npz").read_bytes()[:100000]), r"not a readable \.npz archive"),
    ("missing key", lambda d, p: _write_npz(p, **_mnist_like(d, y_test=None)), r"an \.npz without y_test"),
    ("wrong dtype", lambda d, p: _write_npz(p, **_mnist_like(d, x_train=np.zeros((60000, 28, 28), np.float32))),
     r"x_train is \(60000, 28, 28\) float32, expected \(60000, 28, 28\) uint8"),
    ("wrong shape", lambda d, p: _write_npz(p, **_mnist_like(d, x_test=np.zeros((10000, 32, 32), np.uint8))),
     r"x_test is \(10000, 32, 32\) uint8, expected \(10000, 28, 28\) uint8"),
    ("other pixels", lambda d, p: _write_npz(p, **_mnist_like(d, y_train=np.roll(_mnist_like(d)["y_train"], 1))),
     r"content sha256 mismatch .*expected 06b0d1f1.*not MNIST's arrays"),
])
def test_a_bad_mnist_file_is_refused_clearly_and_nothing_is_written(workdir, data_dir, case, make, message):
    bad = make(data_dir, workdir / "mine.npz")
    cfg = tiny_vae(workdir, f"vae.data.path={bad}")
    with pytest.raises(FetchError, match=message) as e:
        fetch.run(cfg)
    assert str(bad) in str(e.value) and "nothing was written to data/vae/mnist.npz" in str(e.value)
    assert not (workdir / "data/vae").exists() or not any((workdir / "data/vae").iterdir())
    assert not (workdir / "metrics/vae/fetch.json").exists()


def test_the_mirrors_copy_is_accepted_by_its_content_and_keras_file_by_its_hash(workdir, data_dir):
    """The mirror's mnist.npz differs from Keras's file byte for byte (another zip writer): the
    arrays' content hash accepts it; a copy re-zipped once more is accepted the same way."""
    result = fetch.run(tiny_vae(workdir))
    assert result["sha256"] != config.compose().vae.data.sha256
    assert result["content_sha256"] == config.compose().vae.data.content_sha256
    rezipped = _write_npz(workdir / "again.npz", **_mnist_like(data_dir))
    assert fetch.run(tiny_vae(workdir, f"vae.data.path={rezipped}", "vae.paths.raw=data/other"))["source"] == str(rezipped)
    with zipfile.ZipFile(rezipped) as z:
        assert sorted(z.namelist()) == ["x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"]


def test_a_nan_epoch_stops_with_the_best_weights_kept(workdir, monkeypatch):
    """The weights turn NaN as epoch 3 begins: the guard stops (divergence.action=stop), and the
    exported model is epoch 2's, finite."""
    from pipeline import epochs

    epoch_end, seen = epochs.epoch_end, {}

    def poisoned(*args, **kwargs):
        callback = epoch_end(*args, **kwargs)
        begin, end = callback.on_epoch_begin, callback.on_epoch_end

        def on_epoch_begin(epoch, logs=None):
            if epoch == 2:
                callback.model.set_weights([np.full_like(w, np.nan) for w in callback.model.get_weights()])
            begin(epoch, logs)

        def on_epoch_end(epoch, logs=None):
            end(epoch, logs)
            seen[epoch] = callback.model.get_weights()

        callback.on_epoch_begin, callback.on_epoch_end = on_epoch_begin, on_epoch_end
        return callback

    monkeypatch.setattr(epochs, "epoch_end", poisoned)
    cfg = tiny_vae(workdir, "vae.train.epochs=4", "vae.train.divergence.action=stop")
    fetch.run(cfg)
    result = train.run(cfg)
    assert result["stopped"].startswith("epoch 3 diverged") and result["epochs"] == 3 and result["best_epoch"] == 2
    exported = keras.saving.load_model(workdir / "models/vae/vae.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(exported, seen[1], strict=True))
    assert math.isfinite(result["test_neg_elbo"])


class Killed(BaseException):
    """What a SIGKILL leaves behind, in-process: nothing after the raise runs, nothing catches it."""


def test_a_killed_run_resumes_to_the_same_weights_in_the_same_mlflow_run(workdir, monkeypatch, capsys):
    from pipeline import checkpoint

    cfg = tiny_vae(workdir, "vae.train.epochs=3")
    fetch.run(cfg)
    whole = train.run(cfg)
    weights = keras.saving.load_model(workdir / "models/vae/vae.keras", safe_mode=True).get_weights()
    history = (workdir / "metrics/vae/history.csv").read_text()

    save = checkpoint.save

    def save_then_die(folder, epoch, *args, **kwargs):
        save(folder, epoch, *args, **kwargs)
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        train.run(cfg)
    monkeypatch.setattr(checkpoint, "save", save)
    capsys.readouterr()
    resumed = train.run(cfg)
    assert "train: resuming after epoch 1 " in capsys.readouterr().out
    again = keras.saving.load_model(workdir / "models/vae/vae.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(again, weights, strict=True))
    # The losses to float rounding: TensorFlow's CPU reductions are not bit-stable from one process
    # state to the next (the weights above are).
    rows = lambda text: [line.split(",") for line in text.splitlines()[1:]]  # noqa: E731
    again_rows, whole_rows = rows((workdir / "metrics/vae/history.csv").read_text()), rows(history)
    assert [r[0] for r in again_rows] == [r[0] for r in whole_rows]  # the same epochs
    for column in (1, 2):  # loss, val_loss: Keras's running means, summed in another order under load (CI saw 507.79535 vs 507.79538)
        assert [float(r[column]) for r in again_rows] == pytest.approx([float(r[column]) for r in whole_rows], rel=1e-6)
    assert resumed["test_neg_elbo"] == pytest.approx(whole["test_neg_elbo"], rel=1e-6)
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("genlab-vae").experiment_id], order_by=["start_time"])
    assert len(runs) == 2 and runs[1].info.run_id == resumed["run_id"]  # the uninterrupted run, then the killed one
    assert [m.step for m in client.get_metric_history(resumed["run_id"], "loss")] == [1, 2, 3]
    assert not (workdir / "checkpoints").exists()
