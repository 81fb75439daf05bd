"""bench/gpu.py: the GPU recipes README quotes are the ones measured, and its training loop gives the
held-out loss that the sample stage computes for the model it writes."""
import json
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline import config
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu  # noqa: E402  bench/gpu.py


def test_recipes_compose_to_what_was_measured():
    """bench/gpu.json holds each recipe as it ran on the GPU; bench/gpu.py and README name it by its
    Hydra overrides (the first is experiment=quality_tinyshakespeare): both must be the same recipe."""
    runs = json.loads((REPO / "bench/gpu.json").read_text(encoding="utf-8"))
    measured = [q for run in runs.values() for q in run.get("quality", {}).values()]
    assert {q["recipe"] for q in measured} == set(gpu.RECIPES)
    for q in measured:
        cfg = config.compose_section(gpu.RECIPES[q["recipe"]])
        assert OmegaConf.to_container(cfg.model) == q["model"], q["recipe"]
        assert (cfg.vectorize.maxlen, cfg.vectorize.step, cfg.train.batch_size, cfg.train.learning_rate) == \
            (q["maxlen"], q["step"], q["batch"], q["learning_rate"]), q["recipe"]
        assert (cfg.corpus.name, cfg.train.targets, cfg.train.optimizer) == ("tinyshakespeare", "all", "adam")
    assert gpu.RECIPES["lstm2x512"] == ["experiment=quality_tinyshakespeare"]


@pytest.fixture
def tiny_prepared(tmp_path):
    """tiny-shakespeare-like ids (a repeated phrase with noise) where bench/gpu.py looks for them."""
    rng = np.random.default_rng(0)
    ids = np.tile(np.arange(12, dtype=np.uint8), 500)
    ids[rng.random(ids.size) < 0.05] = 12  # some unpredictable characters
    folder = tmp_path / "data/tinyshakespeare"
    folder.mkdir(parents=True)
    np.save(folder / "train.npy", ids[:5000])
    np.save(folder / "val.npy", ids[5000:])
    (folder / "vocab.json").write_text(json.dumps([chr(97 + k) for k in range(13)]), encoding="utf-8")
    return tmp_path / "data"


SMALL = ["experiment=quality_tinyshakespeare", "text.model.units=16", "text.model.embedding=8", "text.vectorize.maxlen=24",
         "text.vectorize.step=12", "text.train.batch_size=32", "text.train.epochs=3", "text.train.learning_rate=0.01"]


def test_quality_loop_model_reproduces_its_loss_in_the_sample_stage(tiny_prepared, tmp_path, monkeypatch):
    """A small recipe for 3 epochs: the model it writes loads on this backend, and the sample stage's
    held-out loss on it is the loop's best_val_loss."""
    import keras

    from pipeline.text.sample import held_out_loss

    monkeypatch.setitem(gpu.RECIPES, "small", SMALL)
    out = tmp_path / "out"
    out.mkdir()
    result = gpu.quality(tiny_prepared, "small", seconds=600, out=out)
    history = result["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3] and result["epochs"] == 3
    assert result["best_val_loss"] == min(r["val_loss"] for r in history)
    assert history[-1]["loss"] < history[0]["loss"]  # it learns the repeated phrase
    model = keras.saving.load_model(out / "small.keras", safe_mode=True)
    val = np.load(tiny_prepared / "tinyshakespeare/val.npy")
    assert held_out_loss(model, val, 24, 3) == pytest.approx(result["best_val_loss"], abs=1e-5)
    assert json.loads((out / "small.json").read_text(encoding="utf-8"))["best_val_loss"] == result["best_val_loss"]


def test_quality_loop_keeps_the_best_epochs_weights_not_the_last(tiny_prepared, tmp_path, monkeypatch):
    """With held-out losses 2.0, 1.0, 1.5 for the three epochs, the model written is epoch 2's."""
    import keras

    real, seen, scripted = gpu.held_out, [], iter([2.0, 1.0, 1.5])

    def held_out(model, val, maxlen, step, batch=1024):
        if len(seen) < 3:  # the three epochs' figures; the final ones are computed for real
            seen.append(model.get_weights())
            return next(scripted)
        return real(model, val, maxlen, step, batch)

    monkeypatch.setattr(gpu, "held_out", held_out)
    monkeypatch.setitem(gpu.RECIPES, "small", SMALL)
    out = tmp_path / "out"
    out.mkdir()
    result = gpu.quality(tiny_prepared, "small", seconds=600, out=out)
    assert (result["best_epoch"], result["best_val_loss"]) == (2, 1.0)
    saved = keras.saving.load_model(out / "small.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, seen[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(saved, seen[2], strict=True))


def test_default_pipeline_runs_the_stages_work_and_its_model_keeps_the_best_loss(data_dir):
    """bench/gpu.py's default-pipeline timing, small: the real fetch and vectorize from the mirror,
    the train stage's loop on the book's targets with its per-epoch samples, then the sample
    stage's work on the model saved and loaded back, whose held-out loss is the loop's best."""
    overrides = ("text.vectorize.max_chars=30000", "text.model.units=16", "text.train.epochs=3", "text.train.batch_size=256",
                 "text.train.epoch_samples.length=30", "text.sample.length=40")
    r = gpu.default_pipeline(REPO / "unused", data_dir, overrides)
    assert r["stages_timed"] == ["fetch", "vectorize", "train", "sample", "total"]
    assert r["seconds"]["total"] >= sum(r["seconds"][k] for k in ("fetch", "vectorize", "train", "sample"))
    history = r["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and r["overrides"] == list(overrides)
    assert all(h["samples_seconds"] > 0 and h["seconds"] >= h["fit_seconds"] + h["samples_seconds"] for h in history)
    best = min(history, key=lambda h: h["val_loss"])
    assert (r["best_epoch"], r["best_val_loss"]) == (best["epoch"], best["val_loss"])
    assert r["sample_val_loss"] == pytest.approx(r["best_val_loss"], abs=1e-5)  # the best weights, saved and loaded
    assert history[-1]["loss"] < history[0]["loss"] < np.log(60)
    assert len(r["sample_t0.5"]) == 40 and r["sample_chars_per_second"] > 0
