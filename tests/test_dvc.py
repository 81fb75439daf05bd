"""`dvc repro` runs what changed and nothing else, in a throwaway git + DVC repository."""
import csv
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import config
from pipeline.text.config import temperatures
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _sh(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def repo(tmp_path, data_dir, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    (tmp_path / ".dvc").mkdir()  # the project's settings, not whatever cache a local run left
    for name in ("conf", "pipeline", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    shutil.rmtree(tmp_path / "pipeline" / "__pycache__", ignore_errors=True)
    env = {**os.environ, "GENLAB_DATA_DIR": str(data_dir),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    _sh(["git", "init", "-q"], tmp_path, env)
    return tmp_path, env


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def repro(repo, *overrides):
    path, env = repo
    config.write_params(["experiment=tiny", *overrides], path / "params.yaml")
    return _ran(_sh([sys.executable, "-m", "dvc", "repro"], path, env))


TEXT = ["text_fetch", "text_vectorize", "text_train", "text_sample"]
VAE = ["vae_fetch", "vae_train", "vae_sample"]
GAN = ["gan_fetch", "gan_train", "gan_sample"]
DREAM = ["dream_fetch", "dream_dream"]
STYLE = ["style_fetch", "style_transfer"]


def _of(ran: list[str], generator: str) -> list[str]:
    return [s for s in ran if s.startswith(generator + "_")]


def test_repro_runs_every_generator_then_what_changed_and_nothing_else(repo):
    path, env = repo
    ran = repro(repo)
    assert sorted(ran) == sorted(TEXT + VAE + GAN + DREAM + STYLE) and _of(ran, "text") == TEXT and _of(ran, "vae") == VAE
    assert _of(ran, "gan") == GAN and _of(ran, "dream") == DREAM and _of(ran, "style") == STYLE
    assert repro(repo) == []  # nothing changed: nothing runs
    assert repro(repo, "text.sample.temperature=0.7") == ["text_sample"]  # a new temperature never retrains
    assert sorted(p.name for p in (path / "samples/text").iterdir()) == ["temperature_0.7.txt"]
    assert repro(repo, "text.sample.temperature=0.7", "text.vectorize.maxlen=16") == ["text_vectorize", "text_train", "text_sample"]
    assert repro(repo, "text.sample.temperature=0.7", "text.vectorize.maxlen=16") == []
    # A VAE key re-runs VAE stages only, and a text key text stages only; a sample key only sampling.
    assert repro(repo, "text.sample.temperature=0.7", "text.vectorize.maxlen=16", "vae.train.beta=0.5") == ["vae_train", "vae_sample"]
    assert repro(repo, "text.sample.temperature=0.7", "text.vectorize.maxlen=16", "vae.train.beta=0.5",
                 "vae.sample.grid=4") == ["vae_sample"]
    assert repro(repo, "text.sample.temperature=0.7", "text.vectorize.maxlen=16", "vae.train.beta=0.5",
                 "vae.sample.grid=4", "text.model.units=8") == ["text_train", "text_sample"]
    assert (path / "samples/vae/latent_grid.png").stat().st_size > 0 and (path / "metrics/vae/train.json").exists()
    # A GAN, dream or style key re-runs that generator's stages only (the text key above ran none of
    # theirs); a GAN sample key only its sampling.
    kept = ("text.sample.temperature=0.7", "text.vectorize.maxlen=16", "vae.train.beta=0.5", "vae.sample.grid=4", "text.model.units=8")
    changed = ("gan.train.label_noise=0.1", "dream.step=0.02", "style.recipes.vgg16.style_weight=50")
    ran = repro(repo, *kept, *changed)
    assert sorted(ran) == ["dream_dream", "gan_sample", "gan_train", "style_transfer"] and _of(ran, "gan") == ["gan_train", "gan_sample"]
    assert repro(repo, *kept, *changed, "gan.sample.steps=5") == ["gan_sample"]
    assert (path / "samples/gan/grid.png").stat().st_size > 0 and (path / "metrics/gan/train.json").exists()
    assert (path / "samples/dream/dream.png").stat().st_size > 0 and (path / "samples/style/transfer.png").stat().st_size > 0


def test_an_edited_custom_corpus_is_fetched_again(repo, tmp_path_factory):
    """text/corpus=custom: the fetch stage depends on the user's file (outside the repository here), so
    editing it in place re-runs fetch, and an unchanged file runs nothing."""
    path, env = repo
    own = tmp_path_factory.mktemp("elsewhere") / "my text.txt"
    own.write_text("a first version of my own text\n" * 20, encoding="utf-8")
    config.write_params(["experiment=tiny", "text/corpus=custom", f"text.corpus.path={own}"], path / "params.yaml")
    fetch = [sys.executable, "-m", "dvc", "repro", "text_fetch"]
    assert _ran(_sh(fetch, path, env)) == ["text_fetch"]
    assert _ran(_sh(fetch, path, env)) == []
    own.write_text("the second version, edited in place\n" * 20, encoding="utf-8")
    assert _ran(_sh(fetch, path, env)) == ["text_fetch"]
    assert (path / "data/raw/custom.txt").read_text(encoding="utf-8") == own.read_text(encoding="utf-8")


def test_dvc_repro_after_a_kill_resumes_training(repo, stall_after_epoch):
    """SIGKILL the whole `dvc repro` (DVC and the train stage) mid-training; the next repro resumes."""
    import signal
    import time

    path, env = repo
    config.write_params(["experiment=tiny", "text.vectorize.max_chars=60000", "text.train.epochs=5"], path / "params.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "text_sample"], cwd=path, env={**env, **stall_after_epoch(2)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    latest, deadline = path / "checkpoints" / "latest", time.time() + 600
    while not (latest.exists() and latest.read_text().strip() >= "epoch_0002"):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (path / "models" / "model.keras").exists()

    out = _sh([sys.executable, "-m", "dvc", "repro", "text_sample"], path, env)
    assert _ran(out) == ["text_train", "text_sample"]  # fetch and vectorize had finished
    assert "train: resuming after epoch 2 " in out  # killed where it waited after epoch 2
    assert (path / "metrics" / "history.csv").read_text().count("\n") == 6
    assert not (path / "checkpoints").exists()


def test_dvc_experiments_compose_params_from_conf_and_run_a_grid(repo):
    """DVC's Hydra composition: `dvc exp run -S` overrides go through conf/, and only what they touch
    re-runs. The DVC way of sweeping: `dvc exp run --queue` with comma lists queues the grid, `dvc
    queue start -j 2` runs it two at a time, `dvc exp show` lists each with its metrics, and DVC's
    run cache serves a model it trained before instead of training it again. (One test: both need
    the same committed baseline, and each baseline costs a whole pipeline run.)"""
    import time

    path, env = repo
    assert _of(repro(repo), "text") == TEXT  # the baseline: maxlen 20
    _sh(["git", "add", "-A"], path, env)
    _sh(["git", "commit", "-qm", "baseline"], path, env)
    dvc = [sys.executable, "-m", "dvc"]
    out = _sh([*dvc, "exp", "run", "-S", "experiment=tiny", "-S", "text.sample.temperature=0.3"], path, env)
    assert _ran(out) == ["text_sample"]
    params = config.load(path / "params.yaml").text
    assert temperatures(params.sample.temperature) == [0.3] and params.vectorize.maxlen == 20

    out = _sh([*dvc, "exp", "run", "--queue", "-S", "experiment=tiny", "-S", "text.sample.temperature=0.2,1.0",
               "-S", "text.vectorize.maxlen=16,20"], path, env)
    assert out.count("Queued experiment") == 4
    _sh([*dvc, "queue", "start", "-j", "2"], path, env)
    try:
        deadline = time.time() + 600
        while re.search(r"\b(Queued|Running)\b", status := _sh([*dvc, "queue", "status"], path, env)):
            assert time.time() < deadline, status
            time.sleep(2)
    finally:
        _sh([*dvc, "queue", "stop", "--kill"], path, env)
    assert status.count("Success") == 4, status
    shown = subprocess.run([*dvc, "exp", "show", "--csv"], cwd=path, env=env, capture_output=True, text=True, check=True)
    rows = list(csv.DictReader(io.StringIO(shown.stdout)))
    grid = {(r["text.sample.temperature"], r["text.vectorize.maxlen"]): r for r in rows if r["Experiment"]}
    assert set(grid) == {(t, m) for t in ("0.2", "1.0") for m in ("16", "20")} | {("0.3", "20")}
    assert grid[("0.3", "20")]["best_val_loss"] == grid[("0.2", "20")]["best_val_loss"]  # the baseline's model
    for (t, m), r in grid.items():
        assert float(r["best_val_loss"]) > 0 and float(r[f"metrics.{t}.nll_per_char"]) > 0
    assert grid[("0.2", "16")]["best_val_loss"] == grid[("1.0", "16")]["best_val_loss"]  # one model per maxlen
    # README's `dvc exp show` line, in a 120-column terminal: every experiment's best_val_loss on
    # screen, beside the params that differ, and no column cut to "…".
    (line,) = [ln for ln in (REPO / "README.md").read_text().splitlines() if ln.startswith("dvc exp show")]
    command = shlex.split(line.split("#")[0])[1:]
    table = subprocess.run([*dvc, *command, "--no-pager"], cwd=path, env={**env, "COLUMNS": "120"},
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert max(len(row) for row in table) <= 120 and "…" not in "\n".join(table)
    header = next(row for row in table if "Experiment" in row).split()
    assert header[1] == "best_val_loss" and {"text.vectorize.maxlen", "text.sample.temperature"} <= set(header)
    experiments = [row for row in table if re.match(r"\s*[├└]── \w+ \[[\w-]+\]\s+\d+\.\d+\s", row)]
    assert len(experiments) == 5, "\n".join(table)  # each with its best_val_loss
    # The run cache now holds the maxlen-16 model: a new temperature for it trains nothing.
    out = _sh([*dvc, "exp", "run", "-S", "experiment=tiny", "-S", "text.sample.temperature=0.7",
               "-S", "text.vectorize.maxlen=16"], path, env)
    assert _ran(out) == ["text_sample"] and "Stage 'text_train' is cached - skipping run" in out
