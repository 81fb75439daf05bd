"""Sweeps that never repeat work: `python -m pipeline -m ...` reuses every stage whose params, code
and upstream results it has seen, within a sweep and across sweeps, and says so in MLflow. A sweep
is one MLflow parent run with its jobs as children, whatever launcher runs them."""
import csv
import json
import subprocess
import sys
from collections import Counter

import mlflow
import pytest

from pipeline import cache

SWEEP = ["experiment=tiny", "text.train.epochs=1", "text.sample.temperature=0.5,1.0", "text.vectorize.maxlen=10,20"]


def _launch(workdir, name: str, *args: str, check: bool = True, experiment: str = "genlab-textgen"):
    """`python -m pipeline -m <args>` in `workdir` with its own store; (parent run, child runs)."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "-m", *args, f"mlflow.tracking_uri={uri}",
                           f"hydra.sweep.dir={name}"], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) == check, proc.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              f"tags.sweep = '{workdir / name}'")
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    return parents[0], [r for r in runs if r not in parents]


def _sweep(workdir, name: str, *extra: str):
    _, runs = _launch(workdir, name, *SWEEP, *extra)
    return runs, Counter((stage, r.data.tags[f"stage.{stage}"]) for r in runs for stage in ("fetch", "vectorize",
                                                                                           "train", "sample"))


def _assert_nested_with_summary(workdir, name: str, parent, runs, jobs: int):
    """Every job a finished child of the sweep's finished parent run, which holds a summary whose
    rows are the children's own params and metrics, and the two plots."""
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert parent.info.status == "FINISHED" and len(runs) == jobs
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert json.loads((workdir / name / "mlflow_parent.json").read_text())["run_id"] == parent.info.run_id
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert logged == {"summary.csv", "summary.json", "val_loss_vs_maxlen.png", "sample_metrics_vs_temperature.png"}
    for png in ("val_loss_vs_maxlen.png", "sample_metrics_vs_temperature.png"):
        assert (workdir / name / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((workdir / name / "summary.csv").open()))
    by_run = {r.info.run_id: r for r in runs}
    assert sorted(row["run_id"] for row in rows) == sorted(by_run)  # one temperature per job: one row each
    for row in rows:
        child = by_run[row["run_id"]]
        t = child.data.params["sample.temperature"]
        assert float(row["temperature"]) == float(t) and row["vectorize.maxlen"] == child.data.params["vectorize.maxlen"]
        assert float(row["best_val_loss"]) == pytest.approx(child.data.metrics["best_val_loss"])
        for metric in ("nll_per_char", "word_in_corpus", "distinct_2", "longest_copy"):
            assert float(row[metric]) == pytest.approx(child.data.metrics[f"sample.{metric}.t{t}"])
    table = json.loads(mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/summary.json"))
    assert len(table["data"]) == len(rows) and "nll_per_char" in table["columns"]
    best = min(runs, key=lambda r: r.data.metrics["best_val_loss"])
    assert parent.data.metrics["best_val_loss"] == best.data.metrics["best_val_loss"]


@pytest.mark.slow
def test_a_sweep_runs_each_distinct_stage_once_and_a_repeat_runs_nothing(workdir):
    parent, runs = _launch(workdir, "first", *SWEEP)
    _assert_nested_with_summary(workdir, "first", parent, runs, jobs=4)
    assert sorted(r.info.run_name for r in runs) == sorted(f"T={t} maxlen={m}"
                                                           for t in ("0.5", "1.0") for m in ("10", "20"))
    counts = Counter((stage, r.data.tags[f"stage.{stage}"]) for r in runs
                     for stage in ("fetch", "vectorize", "train", "sample"))
    # 2 temperatures x 2 maxlens: one corpus, two vectorizations, two models, four sample sets.
    assert counts == {("fetch", "ran"): 1, ("fetch", "reused"): 3, ("vectorize", "ran"): 2, ("vectorize", "reused"): 2,
                      ("train", "ran"): 2, ("train", "reused"): 2, ("sample", "ran"): 4}
    store = workdir / ".genlab/cache"
    entries = {stage.removeprefix("text_"): sorted(p.name for p in (store / stage).iterdir() if p.is_dir())
               for stage in cache.stages() if stage.startswith("text_")}
    assert {stage: len(keys) for stage, keys in entries.items()} == {"fetch": 1, "vectorize": 2, "train": 2, "sample": 4}
    assert not [p for p in store.iterdir() if not p.name.startswith("text_")]  # a text sweep runs no VAE stage
    for r in runs:  # the tag names the entry that was used, and a reused model's run is as comparable as a trained one
        assert r.data.tags["stage.train.key"] in entries["train"]
        assert r.data.params["vectorize.maxlen"] in ("10", "20") and "best_val_loss" in r.data.metrics
        assert r.data.metrics["loss"] > 0
        m = r.data.metrics  # one temperature per job: the sample metrics under names the jobs share
        assert 0 < m["sample.nll_per_char"] < 10 and 0 <= m["sample.word_in_corpus"] <= 1
        assert 0 < m["sample.distinct_4"] <= 1 and m["sample.longest_copy"] >= 1
        t = r.data.params["sample.temperature"]
        assert m[f"sample.nll_per_char.t{t}"] == m["sample.nll_per_char"]
    maxlen_of = {r.data.tags["stage.train.key"]: r.data.params["vectorize.maxlen"] for r in runs}
    assert sorted(maxlen_of.values()) == ["10", "20"]  # one model per maxlen, shared across temperatures

    again, counts = _sweep(workdir, "second")  # an identical sweep, later: nothing runs
    assert len(again) == 4 and set(counts) == {(s, "reused") for s in ("fetch", "vectorize", "train", "sample")}
    for job in range(4):
        assert (workdir / "second" / str(job) / "models/model.keras").stat().st_size > 0
        assert list((workdir / "second" / str(job) / "samples/text").glob("temperature_*.txt"))
    first = {r.data.params["sample.temperature"] + "/" + r.data.params["vectorize.maxlen"]: r for r in runs}
    for r in again:  # the reused samples are the ones generated the first time
        twin = first[r.data.params["sample.temperature"] + "/" + r.data.params["vectorize.maxlen"]]
        t = r.data.params["sample.temperature"]
        path = f"sample/temperature_{t}.txt"
        assert mlflow.artifacts.load_text(f"{r.info.artifact_uri}/{path}") == \
            mlflow.artifacts.load_text(f"{twin.info.artifact_uri}/{path}")


def test_the_cache_key_follows_params_code_and_upstream(tmp_path):
    from omegaconf import OmegaConf

    spec = {"deps": ["pipeline/text/sample.py", "models/model.keras"], "params": ["seed", "sample"],
            "outs": ["${paths.samples}"]}
    cfg = OmegaConf.create({"seed": 1, "sample": {"temperature": 0.5}, "train": {"epochs": 1},
                            "paths": {"samples": "samples"}})
    base = cache.key("sample", spec, cfg, ["a"])
    assert cache.key("sample", spec, cfg, ["a"]) == base
    other_train = OmegaConf.merge(cfg, {"train": {"epochs": 9}})  # not a param of this stage
    assert cache.key("sample", spec, other_train, ["a"]) == base
    assert cache.key("sample", spec, OmegaConf.merge(cfg, {"sample": {"temperature": 1.0}}), ["a"]) != base
    assert cache.key("sample", spec, cfg, ["b"]) != base
    assert cache.key("sample", {**spec, "deps": ["pipeline/text/train.py"]}, cfg, ["a"]) != base
    assert cache.key("sample", spec, OmegaConf.merge(cfg, {"paths": {"samples": "elsewhere"}}), ["a"]) != base


def _changed(value):
    """Another value of the same kind: what a user's override of that key would be."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    return "set" if value is None else None


def _leaves(tree, prefix: str):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}.{k}")
    else:
        yield prefix, tree


def test_every_param_a_stage_declares_is_in_its_cache_key():
    """For each stage of the real dvc.yaml, changing any value under any param it declares (seed
    among them: a sweep over seeds must never reuse another seed's model) changes its key."""
    from omegaconf import OmegaConf

    from pipeline import config

    base = OmegaConf.to_container(config.compose(["experiment=tiny", "text/model=stacked_lstm"]), resolve=True)
    checked = set()
    for name, spec in cache.stages().items():
        key = cache.key(name, spec, OmegaConf.create(base), ["up"])
        for param in cache._names(spec["params"]):
            value = OmegaConf.select(OmegaConf.create(base), param)
            for leaf, value in _leaves(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value, param):
                edited = OmegaConf.create(base)
                OmegaConf.update(edited, leaf, _changed(value), force_add=True)
                assert cache.key(name, spec, edited, ["up"]) != key, f"{name}: {leaf} is not in its key"
                checked.add((name, leaf))
    assert {("text_train", "seed"), ("text_sample", "seed"), ("text_train", "text.model.dropout"),
            ("text_vectorize", "text.vectorize.step"), ("text_fetch", "text.corpus.sha256"),
            ("text_sample", "text.sample.temperature"), ("vae_train", "vae.train.beta"), ("vae_train", "vae.model.latent_dim"),
            ("vae_sample", "vae.sample.concept"), ("vae_fetch", "vae.data.content_sha256")} <= checked


def test_an_edited_corpus_file_is_fetched_again_not_served_from_the_cache(tmp_path, monkeypatch):
    """text/corpus=custom: the user's file is the input they change most; the fetch stage's key follows
    its content, so an edit in place re-runs fetch (and so everything after it)."""
    from pipeline import config
    from pipeline.text import fetch

    monkeypatch.chdir(tmp_path)
    own = tmp_path / "mine.txt"
    own.write_text("first version of my text\n", encoding="utf-8")
    cfg = config.compose(["experiment=tiny", "text/corpus=custom", f"text.corpus.path={own}"])
    store = tmp_path / "store"
    _, status, first = cache.run("text_fetch", fetch.run, cfg, [], store)
    assert status == "ran"
    assert cache.run("text_fetch", fetch.run, cfg, [], store)[1] == "reused"  # unchanged: reused
    own.write_text("second version, edited in place\n", encoding="utf-8")
    _, status, second = cache.run("text_fetch", fetch.run, cfg, [], store)
    assert status == "ran" and second != first
    assert (tmp_path / "data/raw/custom.txt").read_text(encoding="utf-8") == "second version, edited in place\n"


def test_a_stage_that_fails_stores_nothing(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cache, "stages", lambda: {"make": {"params": ["n"], "outs": ["out.txt"]}})

    def failing(c):
        (tmp_path / "out.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("make", failing, OmegaConf.create({"n": 3}), [], tmp_path / "store")
    assert not [p for p in (tmp_path / "store/make").iterdir() if p.is_dir()]  # no entry, no staging folder


def test_concurrent_callers_of_one_key_compute_it_once(tmp_path, monkeypatch):
    """The second caller must be seen waiting on the lock while the first computes (the first does
    not finish until it is), then reuse the first's result: the overlap is proven, not hoped for."""
    import fcntl
    import threading

    from omegaconf import OmegaConf

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cache, "stages", lambda: {"make": {"params": ["n"], "outs": ["out.txt"]}})
    waiting, calls, results = threading.Event(), [], []
    real_flock = fcntl.flock

    def flock(fd, op):
        try:
            real_flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting.set()  # this caller found the key locked: it now blocks until the holder is done
            real_flock(fd, op)

    monkeypatch.setattr(cache.fcntl, "flock", flock)

    def stage(c):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            second.start()
            assert waiting.wait(30), "the second caller never waited on the lock"
        (tmp_path / "out.txt").write_text(str(c.n * 2))
        return {"value": c.n * 2}

    cfg = OmegaConf.create({"n": 3})
    def run():  # each caller's result under its thread's name: the two may return in either order
        results.append((threading.current_thread().name, cache.run("make", stage, cfg, [], tmp_path / "store")))

    second = threading.Thread(target=run, name="second")
    run()  # the first caller, in this thread: it starts the second once it holds the lock
    second.join(60)
    assert waiting.is_set() and calls == ["MainThread"]
    assert {name: status for name, (_, status, _) in results} == {"MainThread": "ran", "second": "reused"}
    assert all(result == {"value": 6} for _, (result, _, _) in results)
    assert (tmp_path / "out.txt").read_text() == "6"


def test_sample_metrics_on_a_hand_made_sample():
    from pipeline.text import sample_metrics as sm

    corpus = "the cat sat on the mat. the dog sat."
    sample = "The cat sat on a log, the cat"
    words = set(sm.words(corpus))
    # the, cat, sat, on, a, log, the, cat: 6 of 8 words occur in the corpus ("a" and "log" do not)
    assert sm.word_in_corpus(sample, words) == pytest.approx(6 / 8)
    assert sm.distinct_n(sample, 1) == pytest.approx(6 / 8)  # the, cat repeat
    assert sm.distinct_n(sample, 2) == pytest.approx(6 / 7)  # "the cat" twice
    assert sm.distinct_n(sample, 4) == pytest.approx(5 / 5)
    assert sm.distinct_n("one two", 3) == 0.0  # no trigram at all
    assert sm.longest_copy(sample, corpus) == len("he cat sat on ")  # the capital T is not in the corpus
    assert sm.longest_copy("xyz", corpus) == 0
    assert sm.longest_copy(corpus, corpus) == len(corpus)


def test_nll_per_char_is_the_models_own_loss_on_each_window():
    import keras
    import numpy as np

    from pipeline.text import sample_metrics as sm
    from pipeline.text.generator import Generator
    from pipeline.text.model.lstm import build as build_lstm

    keras.utils.set_random_seed(5)
    model = build_lstm(7, 6)
    maxlen = 4
    ids = np.random.default_rng(0).integers(0, 7, 12)
    context, sample = ids[:2], ids[2:]  # the first windows are shorter than maxlen
    expected = []
    for k in range(2, 12):
        window = ids[max(0, k - maxlen):k][None, :]
        expected.append(-np.log(float(model(window).numpy()[0, ids[k]])))
    got = sm.nll_per_char(Generator(model, maxlen), context, sample)
    assert got == pytest.approx(np.mean(expected), rel=1e-5)
    with pytest.raises(ValueError, match="context"):
        sm.nll_per_char(Generator(model, maxlen), ids[:0], sample)


@pytest.mark.slow
def test_four_jobs_two_at_a_time_lose_nothing_in_one_sqlite_store(workdir):
    # Two temperatures x two seeds under joblib with 2 workers: two models trained side by side (the
    # last key varies fastest, so jobs 0 and 1 have different seeds) and four sample sets, all
    # writing to one fresh SQLite store.
    parent, runs = _launch(workdir, "par", "experiment=tiny", "text.train.epochs=2", "text.sample.temperature=0.5,1.0",
                           "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    _assert_nested_with_summary(workdir, "par", parent, runs, jobs=4)
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    params = {len(r.data.params) for r in runs}
    assert len(params) == 1 and params.pop() > 40  # every job logged the whole config
    for r in runs:
        assert r.data.params["threads"] == "1"  # 2 cores shared by 2 workers (or 1 each on more cores)
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [1, 2]
        t = r.data.params["sample.temperature"]
        files = {a.path for a in client.list_artifacts(r.info.run_id, "sample")}
        assert files == {f"sample/temperature_{t}.txt", "sample/sample.json"}
        if r.data.tags["stage.train"] == "ran":
            assert {a.path for a in client.list_artifacts(r.info.run_id, "model")} >= {"model/model.keras",
                                                                                        "model/meta.json"}
            assert len(client.list_artifacts(r.info.run_id, "samples")) == 2  # an epoch's samples per epoch
    assert Counter(r.data.tags["stage.train"] for r in runs) == {"ran": 2, "reused": 2}
    # The two trainings overlapped in time: the jobs did run two at a time.
    trained = sorted((r.info.start_time, r.info.end_time) for r in runs if r.data.tags["stage.train"] == "ran")
    assert trained[1][0] < trained[0][1]


@pytest.mark.slow
def test_the_submitit_launcher_runs_a_sweep_as_nested_runs(workdir):
    parent, runs = _launch(workdir, "sub", "experiment=tiny", "text.train.epochs=1", "text.sample.temperature=0.5,1.0",
                           "hydra/launcher=submitit_local")
    _assert_nested_with_summary(workdir, "sub", parent, runs, jobs=2)
    assert sorted(r.data.tags["stage.train"] for r in runs) == ["ran", "reused"]
    assert list((workdir / "sub" / ".submitit").iterdir())  # submitit's own job folders: it did launch them


def test_a_failed_job_ends_the_sweeps_parent_run_as_failed(workdir):
    # Hydra runs the whole batch of jobs, then fails the sweep: the parent run ends FAILED, with a
    # summary of the job that did finish.
    parent, runs = _launch(workdir, "bad", "experiment=tiny", "text.train.epochs=1", "text.vectorize.maxlen=0,10", check=False)
    assert parent.info.status == "FAILED"
    assert [(r.info.run_name, r.info.status) for r in runs] == [("maxlen=10", "FINISHED")]
    rows = list(csv.DictReader((workdir / "bad" / "summary.csv").open()))
    # The job sampled at the default four temperatures: a row for each.
    assert [(row["run_id"], float(row["temperature"])) for row in rows] == [(runs[0].info.run_id, t)
                                                                            for t in (0.2, 0.5, 1.0, 1.2)]


def test_parallel_jobs_share_the_cores_out(monkeypatch):
    from pipeline.__main__ import threads_per_job

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert [threads_per_job(n) for n in (1, 2, 3, 8, 16, -1, -2)] == [8, 4, 2, 1, 1, 1, 1]


def test_the_slurm_launcher_config_composes_onto_submitit():
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.cpus_per_task, launcher.gpus_per_node) == ("gpu", 8, 1)
    assert cfg.hydra.callbacks.sweep_run._target_ == "pipeline.sweep.SweepRun"


def test_run_names_show_what_differs_in_their_first_characters():
    """MLflow's UI cuts names at about 20 characters: sweep jobs and pipeline runs are named by
    their values, short, so that two configs never read the same there (with the seed fixed,
    MLflow's random names were all one name)."""
    from pipeline import config, sweep, tracking

    swept = ["text.sample.temperature", "text.vectorize.maxlen"]
    names = [sweep.job_name([f"text.sample.temperature={t}", f"text.vectorize.maxlen={m}", "experiment=tiny"], swept)
             for t in ("0.5", "1.0") for m in ("20", "40")]
    assert names == ["T=0.5 maxlen=20", "T=0.5 maxlen=40", "T=1.0 maxlen=20", "T=1.0 maxlen=40"]
    defaults = config.section(config.compose(), "text")
    runs = [[], ["text.vectorize.maxlen=40"], ["text.model.units=64"], ["text.vectorize.maxlen=40", "text.model.units=64"],
            ["seed=7"], ["text.mlflow.experiment=other"], ["vae.model.latent_dim=8"]]
    named = [tracking.run_name(config.section(config.compose(o), "text"), defaults) for o in runs]
    assert named == ["defaults", "maxlen=40", "units=64", "maxlen=40 units=64", "seed=7", "defaults", "defaults"]
    # keys whose last parts collide keep their full names
    assert tracking.short_names({"sample.length": 80, "train.epoch_samples.length": 40}) == \
        "sample.length=80 train.epoch_samples.length=40"


@pytest.mark.slow
def test_a_vae_sweep_is_one_parent_run_with_a_nested_run_per_job_and_a_summary(workdir):
    """generator=vae sweeps like the text generator: two latent sizes, two child runs under one
    parent in the genlab-vae experiment, a summary row per job with its bounds; the data is
    fetched once and reused."""
    parent, runs = _launch(workdir, "vae_sweep", "generator=vae", "experiment=tiny", "vae.model.latent_dim=2,3",
                           experiment="genlab-vae")
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert parent.info.status == "FINISHED" and len(runs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in runs) == ["latent_dim=2", "latent_dim=3"]
    assert sorted(r.data.tags["stage.fetch"] for r in runs) == ["ran", "reused"]
    assert client.get_experiment_by_name("genlab-textgen") is None  # no text stage ran
    rows = {row["run_id"]: row for row in csv.DictReader((workdir / "vae_sweep" / "summary.csv").open())}
    assert set(rows) == {r.info.run_id for r in runs}
    for r in runs:
        row = rows[r.info.run_id]
        assert row["model.latent_dim"] == r.data.params["model.latent_dim"]
        assert float(row["test_iwae_nll"]) == pytest.approx(r.data.metrics["test_iwae_nll"])
        assert float(row["test_iwae_nll"]) < float(row["test_neg_elbo"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"summary.csv", "summary.json", "bounds_per_job.png"}
    best = min(runs, key=lambda r: r.data.metrics["test_iwae_nll"])
    assert client.get_run(parent.info.run_id).data.tags["sweep.best_run"] == best.info.run_id


@pytest.mark.slow
def test_a_gan_sweep_is_one_parent_run_with_a_nested_run_per_job_and_a_kid_summary(workdir):
    """generator=gan sweeps over label noise: two child runs under one parent in genlab-gan, a
    summary row per job with its KID, floor and ceiling; the frogs are fetched once."""
    parent, runs = _launch(workdir, "gan_sweep", "generator=gan", "experiment=tiny", "gan.train.label_noise=0.0,0.1",
                           experiment="genlab-gan")
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert parent.info.status == "FINISHED" and len(runs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in runs) == ["label_noise=0.0", "label_noise=0.1"]
    assert sorted(r.data.tags["stage.fetch"] for r in runs) == ["ran", "reused"]
    rows = {row["run_id"]: row for row in csv.DictReader((workdir / "gan_sweep" / "summary.csv").open())}
    assert set(rows) == {r.info.run_id for r in runs}
    for r in runs:
        row = rows[r.info.run_id]
        assert row["train.label_noise"] == r.data.params["train.label_noise"]
        assert float(row["kid"]) == pytest.approx(r.data.metrics["kid_vgg16_random"])
        assert float(row["kid_floor"]) < float(row["kid_ceiling"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"summary.csv", "summary.json", "kid_per_job.png"}
    best = min(runs, key=lambda r: r.data.metrics["kid_vgg16_random"])
    assert client.get_run(parent.info.run_id).data.tags["sweep.best_run"] == best.info.run_id


@pytest.mark.slow
def test_a_style_sweep_is_one_parent_run_with_a_nested_run_per_job_and_a_summary(workdir):
    """generator=style (a generator with no training checkpoint to resume) sweeps over the style
    weight: two child runs under one parent in genlab-style, a summary row per job with its losses
    and SSIM; the images are fetched once."""
    parent, runs = _launch(workdir, "style_sweep", "generator=style", "experiment=tiny",
                           "style.recipes.vgg16.style_weight=1,100", experiment="genlab-style")
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert parent.info.status == "FINISHED" and len(runs) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.tags["stage.fetch"] for r in runs) == ["ran", "reused"]
    rows = {row["run_id"]: row for row in csv.DictReader((workdir / "style_sweep" / "summary.csv").open())}
    assert set(rows) == {r.info.run_id for r in runs}
    for r in runs:
        row = rows[r.info.run_id]
        assert row["recipes.vgg16.style_weight"] == r.data.params["recipes.vgg16.style_weight"]
        assert float(row["ssim_to_content"]) == pytest.approx(r.data.metrics["ssim_to_content"])
        assert float(row["final_loss"]) == pytest.approx(r.data.metrics["final_loss"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"summary.csv", "summary.json", "style_vs_ssim.png"}
    # A hundred times the style weight buys a lower style loss with less of the photo kept.
    weak, strong = sorted(runs, key=lambda r: float(r.data.params["recipes.vgg16.style_weight"]))
    assert strong.data.metrics["final_style_loss"] < weak.data.metrics["final_style_loss"]
    assert strong.data.metrics["ssim_to_content"] < weak.data.metrics["ssim_to_content"]
