"""Neural style transfer (§8.3): the Gram matrix and the three losses against hand-computed values,
SSIM, the style image's crop, L-BFGS's exact evaluation count and bounds, a Keras optimizer lowering
the loss, a tiny transfer's outputs and MLflow contents, and the two images' checks. 64-pixel
images, a randomly initialised VGG16, CPU, everything under tmp_path."""
import json

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import config, networks
from pipeline.download import FetchError
from pipeline.style import fetch, losses, transfer


def tiny_style(tmp_path, *overrides):
    return config.compose(["experiment=tiny", "generator=style", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *overrides])


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_the_gram_matrix_sums_the_outer_products_of_the_channel_vectors():
    # Two positions, two channels: vectors (1, 2) and (3, 4).
    features = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)  # (h=1, w=2, c=2)
    assert _np(losses.gram(features)).tolist() == [[1 + 9, 2 + 12], [2 + 12, 4 + 16]]


def test_the_content_and_style_losses_are_the_books_formulas():
    a, b = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32), np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    assert float(losses.content_loss(a, b)) == pytest.approx(1 + 0 + 4 + 16)
    # sum((A - B)^2) / (4 * 3^2 * pixels^2): the book's normalisation with its 3 "channels"
    assert float(losses.style_loss(a, b, pixels=2)) == pytest.approx(21 / (4 * 9 * 4))


def test_total_variation_is_the_books_on_a_hand_worked_image():
    image = np.zeros((1, 3, 3, 3), np.float32)
    image[0, 1, 1, 0] = 2.0  # one bright pixel in the middle of channel 0
    # Pixels with a right and a lower neighbour: (0,0) none differ; (0,1): below differs by 2 ->
    # (4)^1.25; (1,0): right differs by 2 -> 4^1.25; (1,1): both differ by 2 -> (4 + 4)^1.25.
    expected = 2 * 4 ** 1.25 + 8 ** 1.25
    assert float(losses.total_variation(image)) == pytest.approx(expected, rel=1e-6)


def test_ssim_is_one_for_the_same_image_and_low_for_noise():
    rng = np.random.default_rng(0)
    photo = np.asarray(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((64, 64)))
    assert losses.ssim(photo, photo) == pytest.approx(1.0)
    noise = rng.integers(0, 255, photo.shape, dtype=np.uint8)
    assert losses.ssim(photo, noise) < 0.2 < losses.ssim(photo, np.clip(photo.astype(int) + 8, 0, 255).astype(np.uint8))


def test_the_style_image_is_centre_cropped_to_the_photos_shape_not_stretched():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the middle third white
    out = transfer.crop_to(wide, 50, 50)
    assert out.shape == (50, 50, 3) and out[5:45, 5:45].min() == 255  # only the white middle is kept
    assert transfer.crop_to(np.zeros((300, 100, 3), np.uint8), 20, 40).shape == (20, 40, 3)


def test_lbfgs_spends_exactly_its_evaluations_within_the_pixel_range():
    def rosenbrock(image):  # on x / 100: its valley is slow to follow, its minimum at x = 100
        u = _np(image).ravel().astype(np.float64) / 100
        f = (100 * (u[1:] - u[:-1] ** 2) ** 2 + (1 - u[:-1]) ** 2).sum()
        g = np.zeros_like(u)
        g[:-1] += -400 * u[:-1] * (u[1:] - u[:-1] ** 2) - 2 * (1 - u[:-1])
        g[1:] += 200 * (u[1:] - u[:-1] ** 2)
        return (np.float32(f),), (g / 100).reshape(1, 2, 2, 3).astype(np.float32)

    seen = []
    out = transfer.lbfgs(rosenbrock, np.full((2, 2, 3), 250, np.float32), 7, lambda values, image: seen.append(values[0]))
    assert len(seen) == 7 and min(seen) < seen[0] and out.min() >= 0 and out.max() <= 255
    assert float(rosenbrock(out[None])[0][0]) == pytest.approx(min(seen))  # the best image evaluated, not the last

    target = np.linspace(-100, 400, 12, dtype=np.float32).reshape(1, 2, 2, 3)  # partly outside [0, 255]

    def quadratic(image):
        diff = _np(image) - target
        return (np.float32((diff ** 2).sum()),), 2 * diff

    converged = transfer.lbfgs(quadratic, np.full((2, 2, 3), 128, np.float32), 200, lambda values, image: None)
    assert converged.ravel() == pytest.approx(np.clip(target, 0, 255).ravel(), abs=1e-3)  # the bounded optimum


@pytest.fixture(scope="module")
def tiny_problem():
    rng = np.random.default_rng(3)
    content, style = (rng.integers(0, 255, (32, 48, 3)).astype(np.uint8) for _ in range(2))
    recipe = {"content_layer": "block2_conv2", "style_layers": ["block1_conv1", "block2_conv1"],
              "content_weight": 1.0, "style_weight": 1.0, "tv_weight": 1e-6}
    extractor = networks.feature_extractor("vgg16", "random", [recipe["content_layer"], *recipe["style_layers"]], content.shape, 0)
    loss_of = transfer.loss_function(extractor, content, style, recipe)
    return content, style, recipe, extractor, loss_of


def test_the_total_is_the_weighted_sum_and_zero_content_loss_at_the_photo(tiny_problem):
    content, style, recipe, extractor, loss_of = tiny_problem
    total, c, s, t = (float(_np(v)) for v in loss_of(keras.ops.convert_to_tensor(content[None].astype(np.float32))))
    assert c == 0 and s > 0 and t > 0 and total == pytest.approx(s + 1e-6 * t, rel=1e-5)
    features = extractor(style[None].astype(np.float32))
    grams = [_np(losses.gram(f[0])) for f in features[1:]]
    mine = [_np(losses.gram(f[0])) for f in extractor(content[None].astype(np.float32))[1:]]
    by_hand = np.mean([((g - m) ** 2).sum() / (4 * 9 * (32 * 48) ** 2) for g, m in zip(grams, mine)])
    assert s == pytest.approx(by_hand, rel=1e-4)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_keras_optimizer_lowers_the_loss_and_keeps_pixels_in_range(tiny_problem, name):
    content, style, recipe, extractor, loss_of = tiny_problem
    grad_fn = networks.input_gradient(loss_of)
    seen, images = [], []
    out = transfer.keras_descent(grad_fn, content.astype(np.float32), 5, name, 1.0 if name == "adam" else 1e-3, 100, 0.96,
                                 lambda values, image: (seen.append(values[0]), images.append(image)))
    assert len(seen) == 5 and seen[-1] < seen[0] and out.min() >= 0 and out.max() <= 255 and out.shape == content.shape
    assert np.array_equal(images[-1], out) and not np.array_equal(images[0], content)  # each step's image, after it


@pytest.fixture(scope="module")
def transferred(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("style")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("GENLAB_DATA_DIR", str(data_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tiny_style(folder)
        fetched = fetch.run(cfg)
        result = transfer.run(cfg)
    return folder, fetched, result


def test_a_tiny_transfer_writes_its_images_and_logs_losses_and_progress(transferred):
    folder, fetched, result = transferred
    assert fetched["content"]["sha256"] == "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"
    assert fetched["style"]["sha256"] == "33918a7185ee52a246384a47d6e1f72ec819a7911d44919cba081ca5aa236274"
    out = np.asarray(Image.open(folder / "samples/style/transfer.png"))
    assert out.shape == (43, 64, 3)  # chelsea's 451 x 300 at 64 pixels on its longer side
    assert np.asarray(Image.open(folder / "samples/style/triptych.png")).shape == (43 + 4, 3 * 64 + 8, 3)
    metrics = json.loads((folder / "metrics/style/transfer.json").read_text())
    assert metrics["evaluations"] == 6 and metrics["final_loss"] < metrics["first_loss"] and 0 < metrics["ssim_to_content"] < 1
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    run = client.get_run(result["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "genlab-style"
    for key in ("loss", "content_loss", "style_loss", "tv_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4, 5, 6]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert history[0].value == pytest.approx(metrics["first_loss"]) and run.data.params["optimizer.name"] == "lbfgs"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "progress")} == {
        "progress/evaluation_00003.png", "progress/evaluation_00006.png"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "style")} == {"style/transfer.png", "style/triptych.png"}
    rows = (folder / "metrics/style/history.csv").read_text().splitlines()
    assert rows[0] == "evaluation,loss,content_loss,style_loss,tv_loss" and len(rows) == 7
    assert float(rows[1].split(",")[2]) == 0.0  # the first evaluation is the photo itself: no content loss


def test_the_two_images_may_not_share_a_name_and_a_bad_style_image_is_refused(workdir):
    with pytest.raises(config.ConfigError, match=r"style\.images\.style\.name is images\.content\.name too"):
        tiny_style(workdir, "style.images.style.name=chelsea.png")
    bad = workdir / "painting.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing after it: truncated
    with pytest.raises(FetchError, match=r"painting\.png: .*(truncated|not an image)") as e:
        fetch.run(tiny_style(workdir, f"style.images.style.path={bad}", "style.images.style.name=painting.png"))
    assert "\n" not in str(e.value) and not (workdir / "data/style/painting.png").exists()
