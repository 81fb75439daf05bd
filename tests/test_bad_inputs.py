"""Every bad input gets a clear error naming the file, key or value, a non-zero exit, and leaves
no partial output. Each case runs a stage's real entry point (`main()`, what `dvc repro` runs) on
a params.yaml in a fresh folder."""
import shutil

import pytest

from pipeline import config
from pipeline.text import fetch, sample, train, vectorize

STAGES = {"fetch": fetch, "vectorize": vectorize, "train": train, "sample": sample}


def _text(n=3000):
    return ("the will to power is the will to life; " * (n // 38 + 1))[:n]


def _write(folder, name, data):
    path = folder / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _custom(folder, data, *more):
    path = _write(folder, "mine.txt", data)
    return ["text/corpus=custom", f"text.corpus.path={path}", *more]


def _from_trained(folder, trained, *more):
    """The trained tiny model and its data, copied in: the sample stage's inputs."""
    src = trained[0]
    for part in ("data/prepared", "models"):
        shutil.copytree(src / part, folder / part)
    return list(more)


# id: (stage, setup(folder, trained) -> overrides, what the message must say, outputs that must not exist)
CASES = {
    "missing corpus": ("fetch", lambda f, t: ["text/corpus=custom", f"text.corpus.path={f}/nowhere.txt"],
                       r"corpus.path: .*nowhere.txt does not exist", ["data/raw/custom.txt"]),
    "checksum mismatch": ("fetch", lambda f, t: _custom(f, _text(), "text.corpus.sha256=" + "0" * 64),
                          r"sha256 mismatch .*expected 0000.*set text\.corpus\.sha256 to its hash", ["data/raw/custom.txt", "metrics/fetch.json"]),
    "empty file": ("vectorize", lambda f, t: _custom(f, ""), r"/mine.txt: the corpus is empty",
                   ["data/prepared/train.npy", "data/prepared/vocab.json"]),
    "binary file": ("vectorize", lambda f, t: _custom(f, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
                    r"/mine.txt: a binary file, not text \(a NUL byte at byte offset 8\)", ["data/prepared/train.npy"]),
    "not UTF-8": ("vectorize", lambda f, t: _custom(f, _text().encode()[:100] + b"\xe9t\xe9" + _text().encode()),
                  r"/mine.txt: not UTF-8 text \(invalid byte 0xe9 at byte offset 100\)", ["data/prepared/train.npy"]),
    "shorter than maxlen+1": ("vectorize", lambda f, t: _custom(f, "too short"),
                              r"/mine.txt: 9 characters leave .* fewer than vectorize.maxlen\+1 = 21",
                              ["data/prepared/train.npy"]),
    "no validation window": ("vectorize", lambda f, t: _custom(f, _text(200), "text.vectorize.val_fraction=0.05"),
                             r"200 characters leave 10 for validation, fewer than vectorize.maxlen\+1 = 21",
                             ["data/prepared/train.npy"]),
    "vocabulary too large": ("vectorize", lambda f, t: _custom(f, "".join(map(chr, range(0x10000, 0x10000 + 70000))), "text.vectorize.max_chars=null"),
                             r"/mine.txt: 70000 distinct characters; character ids are uint16",
                             ["data/prepared/train.npy", "data/prepared/vocab.json"]),
    "unknown key": ("train", lambda f, t: ["+text.train.colour=red"], r"params.yaml: text.train.colour: Key 'colour' not in", []),
    "wrong type": ("train", lambda f, t: ["text.vectorize.maxlen=sixty"], r"params.yaml: text.vectorize.maxlen: .*sixty", []),
    "maxlen 0": ("train", lambda f, t: ["text.vectorize.maxlen=0"], r"params.yaml: text.vectorize.maxlen must be >= 1, got 0", []),
    "step -3": ("train", lambda f, t: ["text.vectorize.step=-3"], r"vectorize.step must be >= 1, got -3", []),
    "units 0": ("train", lambda f, t: ["text.model.units=0"], r"model.units must be >= 1, got 0", []),
    "epochs 0": ("train", lambda f, t: ["text.train.epochs=0"], r"train.epochs must be >= 1, got 0", []),
    "batch size 0": ("train", lambda f, t: ["text.train.batch_size=0"], r"train.batch_size must be >= 1, got 0", []),
    "temperature 0": ("sample", lambda f, t: ["text.sample.temperature=0"], r"sample.temperature must be finite and > 0, got 0", []),
    "temperature -1": ("sample", lambda f, t: ["text.sample.temperature=[0.5,-1]"], r"got -1", []),
    "temperature nan": ("sample", lambda f, t: ["text.sample.temperature=nan"], r"sample.temperature must be finite and > 0, got nan", []),
    "temperature inf": ("sample", lambda f, t: ["text.sample.temperature=inf"], r"sample.temperature must be finite and > 0, got inf", []),
    "prompt outside the vocabulary": ("sample", lambda f, t: _from_trained(f, t, "text.sample.prompt='Zürich €5'"),
                                      r"sample.prompt: characters not in the model's vocabulary: \['ü', '€'\] \(set unknown_chars",
                                      ["samples/text", "metrics/sample.json"]),
    "model of another vocabulary": ("sample", lambda f, t: _from_trained(f, t) + [_write(f / "data/prepared", "vocab.json", '["a", "b"]') and "seed=1"],
                                    r"meta.json: the model's vocabulary differs from the data's .*vocab.json", ["samples/text"]),
    "model of another maxlen": ("sample", lambda f, t: _from_trained(f, t, "text.vectorize.maxlen=30"),
                                r"meta.json: the model was trained with maxlen 20, the data with vectorize.maxlen 30", ["samples/text"]),
    "corrupted model": ("sample", lambda f, t: _from_trained(f, t) + [_write(f / "models", "model.keras", b"not a zip") and "seed=1"],
                        r"models/model.keras: not a Keras model file \(not a complete zip archive", ["samples/text", "metrics/sample.json"]),
    "truncated model": ("sample", lambda f, t: _from_trained(f, t) + [_truncate(f / "models/model.keras")],
                        r"models/model.keras: not a Keras model file \(not a complete zip archive", ["samples/text", "metrics/sample.json"]),
    "unreachable MLflow": ("train", lambda f, t: _from_trained(f, t, "mlflow.tracking_uri=http://127.0.0.1:9"),
                           r"mlflow.tracking_uri: cannot reach the MLflow store http://127.0.0.1:9", ["metrics/train.json", "checkpoints"]),
    "output folder not writable": ("train", lambda f, t: _from_trained(f, t) + [_write(f, "afile", "") and f"text.paths.metrics={f}/afile/metrics"],
                                   r"afile/metrics: cannot write here", ["metrics/train.json"]),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "seed=1"


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_fails_clearly_and_writes_nothing(case, workdir, trained):
    stage, setup, message, absent = CASES[case]
    overrides = setup(workdir, trained)
    store = [] if any(o.startswith("mlflow.tracking_uri") for o in overrides) else [f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db"]
    try:
        config.write_params(["experiment=tiny", *store, *overrides], workdir / "params.yaml")
    except config.ConfigError:  # write_params validates too; write what a hand-edited file would hold
        raw = config._compose_raw(["experiment=tiny", *store])
        from omegaconf import OmegaConf, open_dict

        with open_dict(raw):
            for o in overrides:
                key, value = o.lstrip("+").split("=", 1)
                OmegaConf.update(raw, key, _yaml_value(value), force_add=True)
        (workdir / "params.yaml").write_text(OmegaConf.to_yaml(raw), encoding="utf-8")
    if stage in ("vectorize",):
        fetch.run(config.load())  # the stage before it, on the same params
    with pytest.raises(SystemExit) as exit_:
        STAGES[stage].main()
    said = str(exit_.value.code)
    print(f"{case}: {said}")  # pytest -s shows every message
    assert said.startswith("error: ") and exit_.value.code not in (0, None)  # a non-zero exit with a message
    import re

    assert re.search(message, said), said
    for path in absent:
        assert not (workdir / path).exists(), f"{path} was left behind"
    assert not list(workdir.rglob(".*.tmp*")), "a temporary file was left behind"


def _yaml_value(value):
    """An override's value as Hydra reads it: nan and inf are floats."""
    import yaml

    if value.lower() in ("nan", "inf", "-inf"):
        return float(value)
    return yaml.safe_load(value)


def test_prompt_characters_can_be_dropped_or_replaced():
    vocab = sorted(set("abc "))
    assert sample.encode_prompt("a€b", vocab, False, unknown_chars="drop").tolist() == [1, 2]
    assert sample.encode_prompt("a€b", vocab, False, unknown_chars="replace", replacement=" ").tolist() == [1, 0, 2]
    with pytest.raises(sample.SampleError, match=r"the replacement '#' is not in the model's vocabulary"):
        sample.encode_prompt("a€b", vocab, False, unknown_chars="replace", replacement="#")
    with pytest.raises(config.ConfigError, match="sample.unknown_chars must be one of"):
        config.compose(["text.sample.unknown_chars=ignore"])
