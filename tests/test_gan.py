"""The DCGAN (§8.5): its networks and training step, KID and FID against their formulas, the
guard, what it logs, resume, its pictures and bad data files. Tiny configs (experiment=tiny: 300
frogs, 12 steps of a narrow model, a randomly initialised VGG16 as the feature network), CPU, the
data mirror, everything under tmp_path."""
import hashlib
import io
import json
import math
import pickle
import tarfile

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import config
from pipeline.download import FetchError
from pipeline.gan import checks, fetch, quality, sample, train
from pipeline.gan.model import GAN, bce_logits, build_discriminator, build_generator


def tiny_gan(tmp_path, *overrides):
    return config.compose(["experiment=tiny", "generator=gan", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *overrides])


@pytest.fixture(scope="session")
def gan_trained(tmp_path_factory, data_dir):
    """fetch -> train -> sample once on the tiny config, in a folder the tests only read: (folder, cfg, results)."""
    folder = tmp_path_factory.mktemp("gan")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("GENLAB_DATA_DIR", str(data_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tiny_gan(folder)
        results = {stage.__name__.rsplit(".", 1)[-1]: stage.run(cfg) for stage in (fetch, train, sample)}
    return folder, cfg, results


def test_the_books_networks_have_its_shapes_and_the_generator_draws_in_the_data_range():
    g, d = build_generator(32, 128, 256), build_discriminator(128, 0.4)
    assert [tuple(layer.output.shape[1:]) for layer in g.layers if isinstance(layer, keras.layers.Conv2DTranspose)] == [(32, 32, 256)]
    assert g.output.shape[1:] == (32, 32, 3) and d.output.shape[1:] == (1,)
    assert [tuple(layer.output.shape[1:3]) for layer in d.layers if isinstance(layer, keras.layers.Conv2D)] == [
        (30, 30), (14, 14), (6, 6), (2, 2)]  # the book's 'valid' convolutions
    z = np.random.default_rng(0).normal(scale=30.0, size=(5, 32)).astype(np.float32)  # far out: tanh saturates, never leaves [-1, 1]
    out = keras.ops.convert_to_numpy(g(z))
    assert out.min() >= -1.0 and out.max() <= 1.0 and out.std() > 0


def test_the_cross_entropy_from_logits_is_the_books_with_a_sigmoid():
    rng = np.random.default_rng(1)
    labels, logits = rng.uniform(size=(6, 1)).astype(np.float32), rng.normal(scale=3, size=(6, 1)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    assert float(bce_logits(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_one_train_step_lowers_each_networks_own_loss():
    """The discriminator's step lowers d_loss on its batch; the generator's step then lowers g_loss
    against the updated discriminator (no dropout or label noise, plain SGD: a descent step)."""
    keras.utils.set_random_seed(0)
    model = GAN(8, 8, 8, 8, dropout=0.0, label_noise=0.0, seed=3)
    model.compile(keras.optimizers.SGD(0.01), keras.optimizers.SGD(0.01))
    real = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    x = keras.ops.convert_to_tensor(real)

    def losses():
        model.reseed(7, 0)
        d = float(model.d_losses(x)[0])
        model.reseed(7, 1)
        return d, float(model.g_loss(16))

    d0, g0 = losses()
    before = [w.copy() for w in model.get_weights()]
    model.reseed(7, 0)
    d_loss, _, _ = model._step(lambda: model.d_losses(x), model.discriminator.trainable_weights, model.d_optimizer)
    assert float(d_loss) == pytest.approx(d0, rel=1e-5)
    d1, g_mid = losses()
    model.reseed(7, 1)
    model._step(lambda: (model.g_loss(16),), model.generator.trainable_weights, model.g_optimizer)
    d2, g2 = losses()
    assert d1 < d0 and g2 < g_mid
    # And the model's own train_step moves both networks' weights.
    model.set_weights(before)
    metrics = model.train_on_batch(real, return_dict=True)
    moved = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    n_g = len(model.generator.weights)
    assert any(moved[:n_g]) and any(moved[n_g:]) and set(metrics) == {"d_loss", "g_loss", "d_x", "d_g_z"}
    assert 0 <= metrics["d_x"] <= 1 and 0 <= metrics["d_g_z"] <= 1


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel_and_fid_the_frechet_distance():
    from scipy import linalg

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(5, 3))
    k = lambda x, y: (x @ y / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert quality.kid(a, b) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert quality.fid(a, b) == pytest.approx(expected, rel=1e-6)
    big = rng.normal(size=(400, 4))
    assert abs(quality.kid(big[:200], big[200:])) < 0.05 and quality.fid(big, big) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def scorer(data_dir):
    from pipeline import networks

    frogs = fetch.read(data_dir / "cifar10_frogs.npz")[:400]
    extractor = networks.feature_extractor("vgg16", "random", "block2_conv2", (32, 32, 3), seed=0)
    return quality.Scorer(extractor, frogs, 100, 32, 100, seed=0), frogs


def test_kid_of_real_frogs_is_near_its_floor_and_noise_far_above(scorer):
    s, frogs = scorer
    real = s.score(frogs[100:200])
    bounds = s.bounds(frogs)
    assert real["kid"] == pytest.approx(bounds["kid_floor"])  # the floor is exactly this comparison
    assert abs(real["kid"]) < 0.05 * bounds["kid_ceiling"] and bounds["kid_ceiling"] > 0.1
    assert bounds["fid_ceiling"] > 5 * bounds["fid_floor"]
    assert 0.8 < real["diversity"] < 1.25


def test_the_collapse_detector_fires_on_a_collapsed_generator_and_not_on_a_healthy_one(scorer):
    s, frogs = scorer
    collapsed = np.broadcast_to(frogs[0], (100, 32, 32, 3))  # every output the same image
    row = lambda img, g=1.0: {"d_loss": 0.6, "g_loss": g, **s.score(img)}  # noqa: E731
    healthy, fallen = row(frogs[200:300]), row(collapsed)
    assert fallen["diversity"] == pytest.approx(0.0, abs=1e-6)
    assert checks.verdict([healthy, healthy], 3, 0.05, 0.4) is None
    assert checks.verdict([healthy, fallen], 3, 0.05, 0.4).startswith("mode collapse")
    # An untrained generator starts near-constant: that is collapse only after `patience` checks.
    assert checks.verdict([fallen, fallen], 3, 0.05, 0.4) is None
    assert checks.verdict([fallen] * 3, 3, 0.05, 0.4).startswith("mode collapse")


def test_a_winning_discriminator_is_detected_after_patience_checks_of_falling_d_loss_and_rising_g_loss():
    rows = [{"d_loss": d, "g_loss": g, "diversity": 1.0} for d, g in ((0.5, 1.0), (0.01, 2.0), (0.01, 3.0), (0.01, 4.0))]
    assert checks.verdict(rows[:3], 3, 0.05, 0.4) is None
    assert checks.verdict(rows, 3, 0.05, 0.4).startswith("the discriminator wins")
    rows[2]["g_loss"] = 1.5  # g_loss fell once: not three rising checks
    assert checks.verdict(rows, 3, 0.05, 0.4) is None
    assert checks.verdict([{"d_loss": math.nan, "g_loss": 1.0, "diversity": 1.0}], 3, 0.05, 0.4).startswith("the losses")


def test_the_batch_stream_is_a_seeded_permutation_per_pass_and_any_stretch_of_it_the_same():
    whole = train.batch_order(10, 5, 0, 30)
    assert [sorted(whole[i:i + 10]) for i in (0, 10, 20)] == [list(range(10))] * 3
    assert not np.array_equal(whole[:10], whole[10:20])
    assert np.array_equal(train.batch_order(10, 5, 7, 15), whole[7:22])


def test_a_tiny_run_logs_params_checks_grids_and_kid_to_mlflow(gan_trained):
    folder, cfg, results = gan_trained
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    run = client.get_run(results["train"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "genlab-gan" and run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "12" and run.data.params["evaluate.weights"] == "random"
    for metric in ("d_loss", "g_loss", "d_x", "d_g_z", "kid", "fid", "diversity"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [4, 8, 12]
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "grid")}
    assert grids == {"grid/step_000004.png", "grid/step_000008.png", "grid/step_000012.png"}
    metrics = json.loads((folder / "metrics/gan/train.json").read_text())
    assert set(metrics) == {"kid_vgg16_random", "fid_vgg16_random", "kid_vgg16_random_floor", "kid_vgg16_random_ceiling",
                            "fid_vgg16_random_floor", "fid_vgg16_random_ceiling", "best_diversity", "memorisation_ratio", "best_step"}
    kids = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "kid")}
    assert metrics["kid_vgg16_random"] == pytest.approx(min(kids.values())) and kids[metrics["best_step"]] == min(kids.values())
    assert run.data.metrics["kid_vgg16_random_ceiling"] == pytest.approx(metrics["kid_vgg16_random_ceiling"])
    assert metrics["memorisation_ratio"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "sample")} == {"sample/grid.png", "sample/interpolation.png",
                                                                                  "sample/sample.json"}


def test_the_exported_generator_is_the_best_checks_and_the_samples_are_its_images(gan_trained):
    folder, cfg, results = gan_trained
    generator = keras.saving.load_model(folder / "models/gan/generator.keras", safe_mode=True)
    meta = json.loads((folder / "models/gan/meta.json").read_text())
    z = np.random.default_rng(0).standard_normal((4, meta["model"]["latent_dim"])).astype(np.float32)
    assert keras.ops.convert_to_numpy(generator(z)).shape == (4, 32, 32, 3)
    with np.load(folder / "samples/gan/images.npz") as f:
        images = f["x"]
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    grid = np.asarray(Image.open(folder / "samples/gan/grid.png"))
    assert grid.shape == (2 * (4 * 34 + 2), 2 * (4 * 34 + 2), 3)  # 4 x 4 tiles of 32 + 2-pixel gutters, drawn at x2
    assert np.array_equal(grid[4:68:2, 4:68:2], images[0])  # the first tile is the first image
    strip = np.asarray(Image.open(folder / "samples/gan/interpolation.png"))
    assert strip.shape == (2 * (4 * 34 + 2), 2 * (4 * 34 + 2), 3) and strip.std() > 0
    sampled = json.loads((folder / "metrics/gan/sample.json").read_text())
    assert sampled["images"] == 16 and sampled["kid_vgg16_random_floor"] < sampled["kid_vgg16_random_ceiling"]


def test_slerp_runs_from_one_vector_to_the_other_on_the_great_circle():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=16), rng.normal(size=16)
    path = sample.slerp(a, b, 5)
    np.testing.assert_allclose(path[0], a, rtol=1e-6)
    np.testing.assert_allclose(path[-1], b, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linspace(np.linalg.norm(a), np.linalg.norm(b), 5), rtol=1e-5)


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


BAD = {
    "not an npz": (lambda p: p.write_text("just text"), "not an .npz (zip) archive"),
    "truncated": (lambda p: p.write_bytes(open_mirror()[:100_000]), "or a truncated one"),
    "wrong key": (lambda p: _npz(p, images=np.zeros((5000, 32, 32, 3), np.uint8)), "without x"),
    "wrong shape": (lambda p: _npz(p, x=np.zeros((5000, 28, 28, 3), np.uint8)), "expected (5000, 32, 32, 3) uint8"),
    "wrong dtype": (lambda p: _npz(p, x=np.zeros((5000, 32, 32, 3), np.float32)), "float32, expected (5000, 32, 32, 3) uint8"),
    "other pixels": (lambda p: _npz(p, x=np.zeros((5000, 32, 32, 3), np.uint8)), "content sha256 mismatch"),
}


def open_mirror() -> bytes:
    import os
    from pathlib import Path

    return (Path(os.environ["GENLAB_DATA_DIR"]) / "cifar10_frogs.npz").read_bytes()


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_frogs_file_is_refused_clearly_and_nothing_is_written(workdir, case):
    make, message = BAD[case]
    bad = workdir / "frogs.npz"
    make(bad)
    with pytest.raises(FetchError, match="frogs.npz") as e:
        fetch.run(tiny_gan(workdir, f"gan.data.path={bad}"))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (workdir / "data/gan/cifar10_frogs.npz").exists() and not list((workdir / "data/gan").glob(".*"))


def _fake_cifar(path, frogs_per_batch: int, label: int = 6):
    """A CIFAR-10 python archive in the real layout (pickled dicts of rows of 3072 bytes, channels
    first), `frogs_per_batch` images of `label` and as many of class 0 in each training batch."""
    rng = np.random.default_rng(4)
    made = []
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 6):
            data = rng.integers(0, 256, (2 * frogs_per_batch, 3072), dtype=np.uint8)
            labels = [label, 0] * frogs_per_batch
            made.append(data[0::2].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            blob = pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"})
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{i}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return np.concatenate(made)


def test_the_real_origin_is_the_cifar10_archive_its_frogs_extracted_and_the_archive_removed(workdir, monkeypatch):
    archive = workdir / "cifar-10-python.tar.gz"
    frogs = _fake_cifar(archive, 1000)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.delenv("GENLAB_DATA_DIR")
    result = fetch.run(tiny_gan(workdir, f"gan.data.url=file://{archive}", f"gan.data.sha256={sha}", "gan.data.content_sha256=null"))
    assert np.array_equal(fetch.read(workdir / "data/gan/cifar10_frogs.npz"), frogs) and result["source"] == f"file://{archive}"
    assert sorted(p.name for p in (workdir / "data/gan").iterdir()) == ["cifar10_frogs.npz"]  # the archive is gone
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch.run(tiny_gan(workdir, f"gan.data.url=file://{archive}", "gan.data.sha256=" + "0" * 64, "gan.data.content_sha256=null"))
    small = workdir / "small.tar.gz"
    _fake_cifar(small, 10)
    with pytest.raises(FetchError, match="class 6 has 50 training images, expected 5000"):
        fetch.run(tiny_gan(workdir, f"gan.data.url=file://{small}", "gan.data.sha256=null", "gan.data.content_sha256=null"))


def test_the_offline_vgg16_loads_heds_13_convolutions_by_name_and_shape():
    import h5py

    from pipeline import networks

    model = networks.build("vgg16", "hed", (32, 32, 3))
    with h5py.File(networks.hed_weights_file()) as f:
        for block, convs in enumerate(networks.HED_BLOCKS, start=1):
            for i in range(convs):
                group = f[f"block{block}/layers/conv2d" + (f"_{i}" if i else "")]["vars"]
                kernel, bias = model.get_layer(f"block{block}_conv{i + 1}").get_weights()
                assert np.array_equal(kernel, group["0"][()]) and np.array_equal(bias, group["1"][()])
    with pytest.raises(networks.NetworkError, match="weights=hed are VGG16's"):
        networks.build("vgg19", "hed")


def test_a_nan_check_stops_with_the_best_kids_generator_exported(workdir, monkeypatch):
    """The weights turn NaN as check 3 begins: the guard stops (guard.action=stop), and the exported
    generator is the best KID's of checks 1-2, finite."""
    check_end, seen = checks.check_end, {}

    def poisoned(*args, **kwargs):
        callback = check_end(*args, **kwargs)
        begin, end = callback.on_epoch_begin, callback.on_epoch_end

        def on_epoch_begin(epoch, logs=None):
            if epoch == 2:
                callback.model.set_weights([np.full_like(w, np.nan) for w in callback.model.get_weights()])
            begin(epoch, logs)

        def on_epoch_end(epoch, logs=None):
            end(epoch, logs)
            seen[epoch] = [w.copy() for w in callback.model.scored_generator().get_weights()]

        callback.on_epoch_begin, callback.on_epoch_end = on_epoch_begin, on_epoch_end
        return callback

    monkeypatch.setattr(checks, "check_end", poisoned)
    cfg = tiny_gan(workdir, "gan.train.steps=16", "gan.train.guard.action=stop")
    fetch.run(cfg)
    result = train.run(cfg)
    assert result["stopped"].startswith("step 12: the losses are not finite") and result["steps"] == 12
    history = [line.split(",") for line in (workdir / "metrics/gan/history.csv").read_text().splitlines()]
    kid = {int(r[0]): float(r[history[0].index("kid")]) for r in history[1:3]}
    best = min(kid, key=kid.get)
    assert result["best_step"] == best
    exported = keras.saving.load_model(workdir / "models/gan/generator.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(exported, seen[best // 4 - 1], strict=True))


class Killed(BaseException):
    """What a SIGKILL leaves behind, in-process: nothing after the raise runs, nothing catches it."""


def test_a_killed_run_resumes_to_the_same_weights_in_the_same_mlflow_run(workdir, monkeypatch, capsys):
    from pipeline import checkpoint

    cfg = tiny_gan(workdir, "gan.model.ema=0.9")
    fetch.run(cfg)
    whole = train.run(cfg)
    weights = keras.saving.load_model(workdir / "models/gan/generator.keras", safe_mode=True).get_weights()
    history = (workdir / "metrics/gan/history.csv").read_text()

    save = checkpoint.save

    def save_then_die(folder, n, *args, **kwargs):
        save(folder, n, *args, **kwargs)
        if n == 2:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        train.run(cfg)
    monkeypatch.setattr(checkpoint, "save", save)
    capsys.readouterr()
    resumed = train.run(cfg)
    assert "train: resuming after step 8 " in capsys.readouterr().out
    again = keras.saving.load_model(workdir / "models/gan/generator.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(again, weights, strict=True))
    rows = lambda text: [[float(v) for v in line.split(",")[:3]] for line in text.splitlines()[1:]]  # noqa: E731  step, d_loss, g_loss
    again_rows, whole_rows = rows((workdir / "metrics/gan/history.csv").read_text()), rows(history)
    assert [r[0] for r in again_rows] == [r[0] for r in whole_rows] == [4, 8, 12]
    for column in (1, 2):  # the losses are running means: summed in another order under load, equal to float rounding
        assert [r[column] for r in again_rows] == pytest.approx([r[column] for r in whole_rows], rel=1e-6)
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("genlab-gan").experiment_id], order_by=["start_time"])
    assert len(runs) == 2 and runs[1].info.run_id == resumed["run_id"] != whole["run_id"]
    assert [m.step for m in client.get_metric_history(resumed["run_id"], "d_loss")] == [4, 8, 12]
    assert not (workdir / "checkpoints").exists()


def test_python_m_pipeline_reports_a_bad_frogs_file_in_one_line_without_tensorflows_start_up_lines(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.npz"
    bad.write_text("junk")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "generator=gan", "experiment=tiny", f"gan.data.path={bad}",
                           f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: {bad}: not an .npz (zip) archive, or a truncated one; expected an .npz with x (5000, 32, 32, 3) uint8; " \
                        "nothing was written to data/gan/cifar10_frogs.npz"
    assert "Traceback" not in proc.stderr and not any("cuda" in line.lower() or "onednn" in line.lower() for line in lines)
