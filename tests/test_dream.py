"""DeepDream (§8.2): the octave schedule, the activation loss against its formula, one ascent step
raising it, a tiny dream's outputs and MLflow contents, and the base image's checks. 64-pixel
images, a randomly initialised VGG16, CPU, everything under tmp_path."""
import json

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import config, networks
from pipeline.dream import dream, fetch
from pipeline.download import FetchError


def tiny_dream(tmp_path, *overrides):
    return config.compose(["experiment=tiny", "generator=dream", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *overrides])


def test_the_octave_schedule_is_keras_ios_smallest_first():
    assert dream.octave_shapes(200, 300, 3, 1.4) == [(102, 153), (142, 214), (200, 300)]
    assert dream.octave_shapes(64, 48, 1, 1.4) == [(64, 48)]


def test_the_activation_loss_is_the_weighted_mean_square_inside_the_border():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1, 9, 7, 2)).astype(np.float32), rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    got = float(dream.activation_loss([a, b], [0.5, 2.0], border=2))
    # a has an inside (9 x 7 > 2 x 2 borders): rows 2..6, columns 2..4; b is 4 x 4: no inside, all of it.
    expected = 0.5 * (a[:, 2:7, 2:5, :] ** 2).mean() + 2.0 * (b ** 2).mean()
    assert got == pytest.approx(expected, rel=1e-6)


def test_one_ascent_step_raises_the_activation_loss():
    extractor = networks.feature_extractor("vgg16", "random", ["block3_conv3", "block4_conv3"], (None, None, 3), seed=0)
    step = dream.ascent_step(extractor, [1.0, 1.5], border=2)
    image = keras.ops.convert_to_tensor(np.random.default_rng(1).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32))
    before, moved = step(image, 0.01)
    after, _ = step(moved, 0.01)
    assert float(after) > float(before) > 0
    change = np.abs(keras.ops.convert_to_numpy(moved) - keras.ops.convert_to_numpy(image))
    assert change.mean() == pytest.approx(0.01, rel=1e-3)  # normalised: the mean step is exactly `step`


@pytest.fixture(scope="module")
def dreamt(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("dream")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("GENLAB_DATA_DIR", str(data_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tiny_dream(folder)
        fetched = fetch.run(cfg)
        result = dream.run(cfg)
    return folder, fetched, result


def test_a_tiny_dream_writes_its_image_and_logs_steps_octaves_and_gain(dreamt):
    folder, fetched, result = dreamt
    assert fetched["sha256"] == "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
    out = np.asarray(Image.open(folder / "samples/dream/dream.png"))
    base = np.asarray(Image.open(folder / "data/dream/coffee.png").convert("RGB").resize((64, 43), Image.Resampling.LANCZOS))
    assert out.shape == (43, 64, 3) and 0 < np.abs(out.astype(int) - base.astype(int)).mean() < 40  # changed, still the photo
    metrics = json.loads((folder / "metrics/dream/dream.json").read_text())
    assert metrics["steps"] == 6 and metrics["gain"] > 1 and metrics["gain_octave_1"] > 1
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    run = client.get_run(result["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "genlab-dream"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "octave_gain")] == [1, 2]
    assert run.data.metrics["gain"] == pytest.approx(metrics["gain"]) and run.data.params["weights"] == "random"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "octaves")} == {"octaves/octave_1.png", "octaves/octave_2.png"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "dream")} == {"dream/dream.png"}
    rows = (folder / "metrics/dream/history.csv").read_text().splitlines()
    assert rows[0] == "step,octave,iteration,loss" and len(rows) == 7


def test_a_users_photo_is_taken_as_it_is_and_a_non_image_refused(workdir):
    mine = workdir / "mine.jpg"
    Image.fromarray(np.full((80, 120, 3), 90, np.uint8)).save(mine)
    result = fetch.run(tiny_dream(workdir, f"dream.image.path={mine}", "dream.image.name=mine.jpg"))
    assert result["source"] == str(mine) and (workdir / "data/dream/mine.jpg").read_bytes() == mine.read_bytes()
    bad = workdir / "bad.png"
    bad.write_text("no pixels here")
    with pytest.raises(FetchError, match=r"bad.png: not an image PIL can read") as e:
        fetch.run(tiny_dream(workdir, f"dream.image.path={bad}", "dream.image.name=bad.png"))
    assert "\n" not in str(e.value) and not (workdir / "data/dream/bad.png").exists()


def test_the_mirrors_image_must_have_its_pinned_hash(workdir, tmp_path_factory):
    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / "images").mkdir()
    Image.new("RGB", (64, 64)).save(mirror / "images/coffee.png")
    with pytest.raises(FetchError, match=r"sha256 mismatch .*set dream\.image\.sha256 to its hash"):
        fetch.run(tiny_dream(workdir, f"dream.image.mirror={mirror}"))
    assert not (workdir / "data/dream/coffee.png").exists()
