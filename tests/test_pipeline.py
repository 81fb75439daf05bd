"""End to end on the tiny config: what a run writes to disk and to MLflow, and Hydra multirun."""
import csv
import json
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import REPO


@pytest.fixture
def finished_run(trained):
    return trained


def test_run_writes_model_history_metrics_and_samples(finished_run):
    workdir, cfg, meta = finished_run
    assert (workdir / "models/model.keras").stat().st_size > 0
    assert meta["maxlen"] == 20 and meta["lowercase"] is True
    assert meta["vocab"] == json.loads((workdir / "data/prepared/vocab.json").read_text())
    rows = list(csv.DictReader((workdir / "metrics/history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    metrics = json.loads((workdir / "metrics/train.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["val_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    assert metrics["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows))
    assert metrics["val_bpc"] == pytest.approx(metrics["best_val_loss"] / 0.6931471805599453)
    assert metrics["seconds_per_epoch"] > 0
    # TensorFlow alone is some 600 MiB resident: a figure in KiB, bytes or GiB would be far outside
    assert 300 < metrics["peak_rss_mib"] < 16 * 1024
    names = sorted(p.name for p in (workdir / "samples/text").iterdir())
    assert names == ["temperature_0.5.txt", "temperature_1.2.txt"]
    for name in names:
        text = (workdir / "samples/text" / name).read_text().rstrip("\n")
        assert len(text) == 20 + 80 and set(text) <= set(meta["vocab"])


def test_exported_model_is_the_best_validation_epoch(finished_run):
    import keras
    import numpy as np

    from pipeline.text.train import make_dataset

    workdir, cfg, _ = finished_run
    model = keras.saving.load_model(workdir / "models/model.keras", safe_mode=True)
    model.compile(loss="sparse_categorical_crossentropy")
    val = np.load(workdir / "data/prepared/val.npy")
    loss = model.evaluate(make_dataset(val, 20, 3, 64, None, 0), verbose=0)
    best = json.loads((workdir / "metrics/train.json").read_text())["best_val_loss"]
    assert loss == pytest.approx(best, rel=1e-4)


def test_mlflow_holds_params_per_epoch_metrics_samples_and_model(finished_run):
    workdir, cfg, meta = finished_run
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run = client.get_run(meta["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["vectorize.maxlen"] == "20" and p["model.units"] == "16" and p["train.learning_rate"] == "0.01"
    assert p["corpus.name"] == "nietzsche" and p["seed"] == "1337"
    assert run.data.metrics["peak_rss_mib"] == pytest.approx(
        json.loads((workdir / "metrics/train.json").read_text())["peak_rss_mib"])
    tags = run.data.tags
    assert tags["seed"] == "1337" and tags["tensorflow"] and tags["keras"] and tags["keras.backend"] == "tensorflow"
    assert tags["data.train_md5"] and tags["corpus.sha256"].startswith("9cb94a5f")
    rows = list(csv.DictReader((workdir / "metrics/history.csv").open()))
    for key in ("loss", "val_loss", "bpc", "val_bpc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples/epoch_002")}
    assert artifacts == {f"samples/epoch_002/temperature_{t}.txt" for t in (0.2, 0.5, 1.0, 1.2)}
    local = client.download_artifacts(run.info.run_id, "sample/temperature_1.2.txt", str(workdir / "dl"))
    assert open(local).read() == (workdir / "samples/text/temperature_1.2.txt").read_text().rstrip("\n")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/model.keras", "model/meta.json"}
    local = client.download_artifacts(run.info.run_id, "loss.png", str(workdir / "dl"))
    assert open(local, "rb").read() == (workdir / "metrics/loss.png").read_bytes()


def test_loss_plot_is_a_png_of_the_history(finished_run):
    import matplotlib.image

    workdir, _, _ = finished_run
    png = (workdir / "metrics/loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(workdir / "metrics/loss.png")
    assert image.shape[:2] == (360, 600)  # 6 x 3.6 inches at 100 dpi
    assert image[..., :3].std() > 0.05  # lines and text drawn, not a blank canvas


@pytest.mark.slow
def test_hydra_multirun_gives_one_mlflow_run_per_job(workdir, data_dir):
    # A relative corpus.path is the user's, relative to where they ran the command, not to the job folder.
    (workdir / "mine.txt").write_text((data_dir / "nietzsche.txt").read_text(encoding="utf-8")[:30000], encoding="utf-8")
    uri = f"sqlite:///{workdir}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", "experiment=tiny", "text.train.epochs=1", "text/corpus=custom",
         "text.corpus.path=mine.txt", "text.sample.temperature=0.5,1.0", f"mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep"],
        cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("genlab-textgen").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]  # the sweep's own run
    runs = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(runs) == 2
    assert {r.data.params["sample.temperature"] for r in runs} == {"0.5", "1.0"}
    assert {r.data.tags["sweep"] for r in runs} == {str(workdir / "sweep")}
    assert {r.data.tags["sweep.job"] for r in runs} == {"0", "1"}
    assert {r.data.params["corpus.path"] for r in runs} == {str(workdir / "mine.txt")}
    for job, t in (("0", "0.5"), ("1", "1.0")):
        assert (workdir / "sweep" / job / "samples/text" / f"temperature_{t}.txt").exists()


def _pipeline(workdir, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args, f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db"],
                          cwd=workdir, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_expected_errors_under_python_m_pipeline_are_one_line_and_tag_the_failed_run(workdir):
    """As under dvc repro: `error: <the user's file>: ...`, a non-zero exit, no traceback, and the
    FAILED MLflow run says why; in a sweep the failed job is named and the others run; a typo in a
    key is caught before Hydra with the nearest key."""
    (workdir / "binary.txt").write_bytes(b"text\x00more text" * 100)
    single = _pipeline(workdir, "experiment=tiny", "text/corpus=custom", "text.corpus.path=binary.txt", "hydra.run.dir=one")
    assert single.returncode != 0 and "Traceback" not in single.stderr
    message = f"{workdir / 'binary.txt'}: a binary file, not text (a NUL byte at byte offset 4)"
    assert single.stderr.strip().splitlines()[-1] == f"error: {message}"
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("genlab-textgen").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["error"] == message

    swept = _pipeline(workdir, "-m", "experiment=tiny", "text.train.epochs=1", "text.sample.temperature=0.5", "text/corpus=custom",
                      "text.corpus.path=binary.txt,missing.txt", "hydra.sweep.dir=sweep")
    assert swept.returncode != 0 and "Traceback" not in swept.stderr
    assert f"error: {message}" in swept.stderr and "Error executing job with overrides" in swept.stderr
    assert (workdir / "sweep/1").is_dir()  # the second job ran too
    runs = [r for r in client.search_runs([client.get_experiment_by_name("genlab-textgen").experiment_id]) if r.data.tags.get("sweep.job") == "1"]
    assert runs[0].data.tags["error"] == f"text.corpus.path: {workdir / 'missing.txt'} does not exist or is not a file"
    assert runs[0].data.params["corpus.path"] == str(workdir / "missing.txt")  # the failed job's config is there

    typo = _pipeline(workdir, "-m", "text.vectorise.maxlen=20,40")
    assert typo.returncode != 0 and "Traceback" not in typo.stderr and "+text.vectorise" not in typo.stderr
    assert typo.stderr.strip().endswith("unknown key text.vectorise.maxlen; did you mean text.vectorize.maxlen?")


@pytest.mark.slow
def test_a_killed_hydra_job_resumes_in_its_own_mlflow_run(workdir, stall_after_epoch):
    """`python -m pipeline ... hydra.run.dir=<fixed>`, SIGKILLed after epoch 2's checkpoint, then
    started again: training resumes, in the run the checkpoint names (params and tags kept), which
    ends FINISHED; no second run."""
    import os
    import signal
    import time

    args = [sys.executable, "-m", "pipeline", "experiment=tiny", "text.vectorize.max_chars=60000", "text.train.epochs=4",
            "text.sample.temperature=0.5", f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db", "hydra.run.dir=job"]
    proc = subprocess.Popen(args, cwd=workdir, env={**os.environ, **stall_after_epoch(2)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest, deadline = workdir / "job/checkpoints/latest", time.time() + 600
    while not (latest.exists() and latest.read_text().strip() >= "epoch_0002"):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("genlab-textgen").experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.status == "RUNNING"  # what a SIGKILL leaves

    again = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train: resuming after epoch 2" in again.stdout and killed.info.run_id in again.stdout
    (run,) = client.search_runs([experiment])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "4" and "tensorflow" in run.data.tags and "data.train_md5" in run.data.tags
    assert run.data.tags["resumed_from_epoch"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 3, 4]


def test_steps_per_execution_changes_speed_not_the_weights():
    """`train.steps_per_execution` batches several steps into one compiled call: the same
    batches in the same order, so the same weights, also when the epoch is not a multiple of it."""
    import keras
    import numpy as np

    from pipeline.text.model.lstm import build as build_lstm
    from pipeline.epochs import make_optimizer
    from pipeline.text.train import make_dataset

    ids = np.random.default_rng(0).integers(0, 11, 3000).astype(np.int32)  # 994 windows: 16 batches of 64, the last partial
    weights = []
    for steps in (1, 5):
        keras.utils.set_random_seed(3)
        model = build_lstm(11, 8)
        model.compile(optimizer=make_optimizer("rmsprop", 0.01, 1.0), loss="sparse_categorical_crossentropy",
                      steps_per_execution=steps)
        history = model.fit(make_dataset(ids, 20, 3, 64, 0, 1, 0), epochs=1, verbose=0)
        weights.append((model.get_weights(), history.history["loss"][0]))
    (w1, loss1), (w5, loss5) = weights
    assert loss5 == pytest.approx(loss1, rel=1e-5)
    for a, b in zip(w1, w5):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(w1[1], build_lstm(11, 8).get_weights()[1])  # it did train
