"""Using a trained model: the generate command, the MLflow pyfunc text generator, its server."""
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pytest

from pipeline import config
from pipeline.text.config import compose_generate
from pipeline.text import generate
from pipeline.text import model as models
from pipeline.text.generator import Generator
from pipeline.text.sample import SampleError, encode_prompt
from pipeline.text.vectorize import decode


def _cfg(folder, *overrides):
    return compose_generate([f"model_dir={folder / 'models'}", *overrides])


def _expected(folder, prompt, temps, num_samples, length, seed):
    """The texts generate should give, computed here without the generator: the Keras model on the
    last maxlen characters for each next one (the book's window), the book's reweighting
    exp(log p / T), and the documented seeding (sample i draws from default_rng([seed, i]), one
    uniform per character, the first index whose cumulative mass reaches it)."""
    model, meta = models.load(folder / "models")
    vocab, maxlen = meta["vocab"], meta["maxlen"]
    out = []
    for i, t in enumerate(t for t in temps for _ in range(num_samples)):
        rng, ids = np.random.default_rng([seed, i]), [vocab.index(ch) for ch in prompt.lower()]
        start = len(ids)
        for _ in range(length):
            window = ids[-maxlen:]
            if window:
                p = np.asarray(model(np.array([window], dtype="int32")), dtype=np.float64)[0]
            else:  # nothing read yet: what the model predicts from its zero state
                b = model.get_layer("next_char").get_weights()[1].astype(np.float64)
                p = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
            q = np.exp(np.log(p) / t)
            cdf = np.cumsum(q / q.sum())
            ids.append(int((cdf < (1.0 - rng.random()) * cdf[-1]).sum()))
        out.append(prompt.lower() + "".join(vocab[k] for k in ids[start:]))
    return out


class Terminal(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = []

    def isatty(self):
        return True

    def write(self, s):
        self.writes.append(s)
        return super().write(s)


def test_generate_streams_character_by_character_on_a_terminal(trained):
    folder, _, _ = trained
    out = Terminal()
    result = generate.run(_cfg(folder, "prompt=the meaning of", "length=30", "temperature=0.5"), out)
    assert result["texts"] == _expected(folder, "the meaning of", [0.5], 1, 30, 1337)
    assert out.getvalue() == result["texts"][0] + "\n"
    # the prompt, then each of the 30 characters written on its own, then the newline
    assert out.writes[0] == "the meaning of" and len(out.writes) == 1 + 30 + 1
    assert all(len(w) == 1 for w in out.writes[1:])


def test_streamed_and_batched_output_are_the_same_text(trained):
    folder, _, _ = trained
    args = ("prompt='the '", "length=40", "temperature=[0.2,1.0]", "num_samples=2", "seed=7")
    streamed, batched = Terminal(), io.StringIO()
    a = generate.run(_cfg(folder, *args, "stream=true"), streamed)
    b = generate.run(_cfg(folder, *args), batched)  # not a terminal: one batch, printed at the end
    assert a["texts"] == b["texts"] == _expected(folder, "the ", [0.2, 1.0], 2, 40, 7)
    assert streamed.getvalue() == batched.getvalue()
    assert batched.getvalue().startswith("--- temperature 0.2, sample 1\nthe ")
    assert batched.getvalue().count("--- temperature 1.0, sample 2\n") == 1


@pytest.mark.parametrize("prompt", ["", "t", "The Meaning Of Life Is Not What It Seems"])
def test_prompts_of_any_length_work(trained, prompt):
    folder, _, meta = trained
    assert len(prompt) in (0, 1) or len(prompt) > meta["maxlen"]
    result = generate.run(_cfg(folder, f"prompt={prompt!r}" if prompt else "prompt=''", "length=25"), io.StringIO())
    text = result["texts"][0]
    assert text.startswith(prompt.lower()) and len(text) == len(prompt) + 25
    assert set(text) <= set(meta["vocab"])
    assert result["texts"] == _expected(folder, prompt, [0.5], 1, 25, 1337)


def test_generate_command_is_deterministic_and_writes_a_file(trained, tmp_path):
    folder, _, _ = trained
    cmd = [sys.executable, "-m", "pipeline.text.generate", f"model_dir={folder / 'models'}", "prompt=the will to", "length=60",
           "temperature=[0.5,1.2]"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    other = subprocess.run([*cmd, "seed=2"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == again.stdout != other.stdout
    texts = _expected(folder, "the will to", [0.5, 1.2], 1, 60, 1337)
    assert first.stdout == f"--- temperature 0.5, sample 1\n{texts[0]}\n\n--- temperature 1.2, sample 1\n{texts[1]}\n\n"
    to_file = subprocess.run([*cmd, f"output={tmp_path / 'out.txt'}"], capture_output=True, text=True, timeout=300)
    assert to_file.returncode == 0 and to_file.stdout == ""
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == first.stdout


def test_generate_from_an_mlflow_run_equals_the_model_folder(trained, monkeypatch):
    folder, cfg, meta = trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    by_run = generate.run(compose_generate([f"run_id={meta['mlflow']['run_id']}", "length=30",
                                                   f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}"]), io.StringIO())
    by_folder = generate.run(_cfg(folder, "length=30"), io.StringIO())
    assert by_run["texts"] == by_folder["texts"]


def test_generate_errors_name_what_is_wrong(trained, tmp_path):
    folder, cfg, _ = trained
    with pytest.raises(models.ModelError, match=r"nowhere/model\.keras: not found"):
        generate.run(compose_generate([f"model_dir={tmp_path / 'nowhere'}"]), io.StringIO())
    with pytest.raises(SampleError, match=r"prompt: characters not in the model's vocabulary: \['€'\]"):
        generate.run(_cfg(folder, "prompt='€uro'"), io.StringIO())
    from pipeline.tracking import TrackingError
    with pytest.raises(TrackingError, match="run_id 0123abc: cannot fetch its model"):
        generate.run(compose_generate(["run_id=0123abc", f"mlflow.tracking_uri={cfg.mlflow.tracking_uri}"]),
                     io.StringIO())
    for bad, key in (("temperature=0", "temperature"), ("length=0", "length"), ("mode=beam", "mode"),
                     ("num_samples=0", "num_samples"), ("+colour=red", "colour")):
        with pytest.raises(config.ConfigError, match=key):
            compose_generate([bad])


def test_pyfunc_round_trip(trained):
    folder, cfg, meta = trained
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    pf = mlflow.pyfunc.load_model(f"runs:/{meta['mlflow']['run_id']}/text_generator")
    prompts = ["the meaning of", "", "What Is"]
    texts = pf.predict(prompts, params={"temperature": 0.7, "length": 50, "seed": 3})
    assert len(texts) == 3 and all(len(t) == 50 for t in texts)
    model, _ = models.load(folder / "models")
    gen = Generator(model, meta["maxlen"])
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        ids = encode_prompt(prompt, meta["vocab"], meta["lowercase"])
        want = gen.generate(ids, [0.7], 50, [np.random.default_rng([3, i])])[0]
        assert text == decode(want, meta["vocab"])
    # defaults come from the signature: temperature 0.5, length 200, seed 1337
    assert pf.metadata.get_params_schema().to_dict() == [
        {"name": "temperature", "type": "double", "default": 0.5, "shape": None},
        {"name": "length", "type": "long", "default": 200, "shape": None},
        {"name": "seed", "type": "long", "default": 1337, "shape": None},
        {"name": "mode", "type": "string", "default": "window", "shape": None}]
    assert len(pf.predict(["the"])[0]) == 200
    with pytest.raises(mlflow.exceptions.MlflowException, match="temperature must be finite and > 0"):
        pf.predict(["the"], params={"temperature": -1.0})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_served_model_answers_invocations(trained, tmp_path):
    folder, cfg, meta = trained
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}  # uvicorn
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{meta['mlflow']['run_id']}/text_generator",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"inputs": ["the meaning of"], "params": {"temperature": 0.5, "length": 200}})
        assert status == 200
        pf = mlflow.pyfunc.load_model(f"runs:/{meta['mlflow']['run_id']}/text_generator")
        assert body == {"predictions": pf.predict(["the meaning of"], params={"temperature": 0.5, "length": 200})}
        assert len(body["predictions"][0]) == 200
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": ["€"]})
        assert status == 400 and "not in the model's vocabulary" in body["message"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_registered_model_loads_from_the_registry(trained, tmp_path, monkeypatch):
    from pipeline.text import pyfunc

    monkeypatch.chdir(tmp_path)  # a new SQLite store's Default experiment keeps artifacts in ./mlruns
    folder, _, _ = trained
    uri = f"sqlite:///{tmp_path}/registry.db"
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run():
            pyfunc.log(folder / "models", "genlab-tiny")
        versions = mlflow.MlflowClient(uri).search_model_versions("name='genlab-tiny'")
        assert [int(v.version) for v in versions] == [1]
        registered = mlflow.pyfunc.load_model("models:/genlab-tiny/1")
        texts = registered.predict(["the"], params={"length": 30, "seed": 5})
        model, meta = models.load(folder / "models")
        ids = encode_prompt("the", meta["vocab"], meta["lowercase"])
        want = Generator(model, meta["maxlen"]).generate(ids, [0.5], 30, [np.random.default_rng([5, 0])])[0]
        assert texts == [decode(want, meta["vocab"])]
    finally:
        mlflow.set_tracking_uri(None)


def test_the_served_model_caps_length_and_never_echoes_a_huge_prompt(trained, tmp_path, monkeypatch):
    """A request above the model's limit (mlflow.serve_max_length when it was logged) is a 400
    before any generation; a megabyte prompt of unknown characters is not echoed back whole."""
    from pipeline.text import pyfunc

    folder, cfg, meta = trained
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    pf = mlflow.pyfunc.load_model(f"runs:/{meta['mlflow']['run_id']}/text_generator")
    with pytest.raises(mlflow.exceptions.MlflowException, match="length must be at most 10000 .*got 10001") as e:
        pf.predict(["the"], params={"length": 10001})
    assert e.value.get_http_status_code() == 400
    huge = "".join(chr(0x4E00 + i) for i in range(5000)) * 70  # 350,000 characters the model never saw
    with pytest.raises(mlflow.exceptions.MlflowException, match="and 4980 more") as e:
        pf.predict([huge], params={"length": 5})
    assert len(str(e.value)) < 1000
    uri = f"sqlite:///{tmp_path}/limit.db"
    import shutil

    monkeypatch.chdir(tmp_path)  # a new SQLite store's Default experiment keeps artifacts in ./mlruns
    limited_dir = tmp_path / "models"
    shutil.copytree(folder / "models", limited_dir)
    (limited_dir / "meta.json").write_text(json.dumps({**meta, "serve_max_length": 25}))
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run():
            info = pyfunc.log(limited_dir)
        limited = mlflow.pyfunc.load_model(info.model_uri)
        assert len(limited.predict(["the"], params={"length": 25})[0]) == 25
        with pytest.raises(mlflow.exceptions.MlflowException, match="at most 25"):
            limited.predict(["the"], params={"length": 26})
    finally:
        mlflow.set_tracking_uri(None)


def test_no_tensorflow_start_up_lines_on_a_machine_without_a_gpu_unless_asked(trained):
    """A newcomer reads `E0000 ... failed call to cuInit: CUDA error` as a failure: without a GPU
    the commands print none of TensorFlow's start-up lines; TF_CPP_MIN_LOG_LEVEL=0 shows them."""
    folder, _, _ = trained
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["CUDA_VISIBLE_DEVICES"] = "-1"  # no GPU, whatever this machine has
    cmd = [sys.executable, "-m", "pipeline.text.generate", f"model_dir={folder / 'models'}", "prompt=the", "length=5"]
    quiet = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout.startswith("the")
    noise = [line for line in quiet.stderr.splitlines() if line.startswith(("I0000", "W0000", "E0000", "WARNING: All log"))]
    assert noise == [], quiet.stderr[-2000:]
    verbose = subprocess.run(cmd, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"}, capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "I0000" in verbose.stderr
