
import pytest
import yaml
from omegaconf import OmegaConf

from pipeline import config
from tests.conftest import REPO


def test_params_yaml_is_conf_composed():
    """params.yaml is never edited by hand: it must equal conf/ composed with no overrides."""
    committed = (REPO / "params.yaml").read_text(encoding="utf-8")
    composed = OmegaConf.to_container(config.compose())
    assert yaml.safe_load(committed) == composed, "params.yaml is stale: run `python -m pipeline.config`"


def test_write_params_is_byte_for_byte_what_dvc_composes(tmp_path):
    """`dvc exp run -S` composes params.yaml itself; ours must not differ from it."""
    from dvc.utils.hydra import compose_and_dump

    ours, dvcs = tmp_path / "ours.yaml", tmp_path / "dvc.yaml"
    overrides = ["experiment=tiny", "sample.temperature=0.7"]
    config.write_params(overrides, ours)
    compose_and_dump(dvcs, str(REPO / "conf"), None, "config", str(tmp_path), overrides)
    assert ours.read_text() == dvcs.read_text()


def test_defaults_are_the_books_recipe():
    cfg = config.compose()
    assert (cfg.corpus.name, cfg.vectorize.lowercase, cfg.vectorize.maxlen, cfg.vectorize.step) == ("nietzsche", True, 60, 3)
    assert (cfg.model.name, cfg.model.units) == ("lstm", 128)
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.batch_size) == ("rmsprop", 0.01, 128)
    assert list(cfg.train.epoch_samples.temperatures) == [0.2, 0.5, 1.0, 1.2]
    assert config.temperatures(cfg.sample.temperature) == [0.2, 0.5, 1.0, 1.2]
    assert cfg.vectorize.val_fraction == 0.1


def test_tiny_experiment_and_single_temperature():
    cfg = config.compose(["experiment=tiny", "sample.temperature=0.5"])
    assert (cfg.vectorize.max_chars, cfg.model.units, cfg.train.epochs) == (20000, 16, 2)
    assert config.temperatures(cfg.sample.temperature) == [0.5]


def test_config_is_read_only():
    cfg = config.compose()
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.vectorize.maxlen = 3


@pytest.mark.parametrize("override, key", [
    ("vectorize.maxlen=0", "vectorize.maxlen"),
    ("vectorize.step=-1", "vectorize.step"),
    ("vectorize.val_fraction=0", "vectorize.val_fraction"),
    ("vectorize.val_fraction=1.0", "vectorize.val_fraction"),
    ("model.units=0", "model.units"),
    ("vectorize.val_step=0", "vectorize.val_step"),
    ("train.targets=some", "train.targets"),
    ("train.time_limit=0", "train.time_limit"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("train.learning_rate=-0.1", "train.learning_rate"),
    ("train.epochs=0", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_parts=0", "train.batch_parts"),
    ("train.batch_parts=many", "train.batch_parts"),
    ("train.batch_parts=true", "train.batch_parts"),
    ("train.batch_parts=1.5", "train.batch_parts"),
    ("train.fused_lstm=1", "train.fused_lstm"),
    ("train.fused_lstm=maybe", "train.fused_lstm"),
    ("train.optimizer=adagrad", "train.optimizer"),
    ("sample.temperature=0", "sample.temperature"),
    ("sample.temperature=-1", "sample.temperature"),
    ("sample.temperature=[0.5,0]", "sample.temperature"),
    ("sample.temperature=nan", "sample.temperature"),
    ("sample.temperature=inf", "sample.temperature"),
    ("sample.temperature=hot", "sample.temperature"),
    ("train.epoch_samples.temperatures=[0.0]", "train.epoch_samples.temperatures"),
    ("sample.mode=sideways", "sample.mode"),
    ("vectorize.maxlen=abc", "vectorize.maxlen"),
    ("vectorize.lowercase=maybe", "vectorize.lowercase"),
    ("vectorize.colour=red", "vectorize.colour"),
    ("+vectorize.colour=red", "colour"),
    ("corpus.sha256=abc", "corpus.sha256"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.compose([override])


# Every range-checked key at its boundary: the first value refused and the first accepted on each
# side that has a bound. A check written with the wrong operator (> for >=, or a forgotten bound)
# fails one of the two.
BOUNDARIES = [  # (extra overrides, key, refused, accepted)
    ([], "seed", -1, 0),
    ([], "threads", 0, 1),
    ([], "vectorize.maxlen", 0, 1),
    ([], "vectorize.step", 0, 1),
    ([], "vectorize.val_step", 0, 1),
    ([], "vectorize.max_chars", 1, 2),
    ([], "vectorize.val_fraction", 0, 0.001),
    ([], "vectorize.val_fraction", 1.0, 0.999),
    ([], "model.units", 0, 1),
    (["model=stacked_lstm"], "model.layers", 0, 1),
    (["model=stacked_lstm"], "model.dropout", -0.01, 0),
    (["model=stacked_lstm"], "model.dropout", 1.0, 0.99),
    (["model=gru"], "model.embedding", 0, 1),
    (["model=conv1d"], "model.kernel_size", 1, 2),
    (["model=conv1d"], "model.dilations", [0], [1]),
    ([], "train.learning_rate", 0, 1e-9),
    ([], "train.batch_size", 0, 1),
    ([], "train.steps_per_execution", 0, 1),
    ([], "train.batch_parts", 0, 1),
    ([], "train.epochs", 0, 1),
    ([], "train.time_limit", 0, 0.001),
    ([], "train.shuffle_buffer", -1, 0),
    ([], "train.clipnorm", 0, 1e-6),
    ([], "train.plateau.factor", 0, 0.01),
    ([], "train.plateau.factor", 1.0, 0.99),
    ([], "train.plateau.patience", 0, 1),
    ([], "train.plateau.min_lr", 0, 1e-9),
    ([], "train.divergence.max_ratio", 1.0, 1.01),
    ([], "train.divergence.max_rollbacks", -1, 0),
    ([], "train.epoch_samples.length", 0, 1),
    ([], "train.epoch_samples.temperatures", [0.0], [0.01]),
    ([], "sample.length", 0, 1),
    ([], "sample.temperature", 0, 0.01),
    ([], "fetch.timeout", 0, 0.1),
    ([], "mlflow.serve_max_length", 0, 1),
]


@pytest.mark.parametrize("extra, key, refused, accepted", BOUNDARIES, ids=lambda v: str(v))
def test_every_range_check_holds_at_its_boundary(extra, key, refused, accepted):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.compose([*extra, f"{key}={refused}"])
    value = OmegaConf.select(config.compose([*extra, f"{key}={accepted}"]), key)
    assert (OmegaConf.to_container(value) if OmegaConf.is_config(value) else value) == accepted


@pytest.mark.parametrize("key, refused, accepted", [("length", 0, 1), ("num_samples", 0, 1), ("seed", -1, 0)])
def test_the_generate_commands_range_checks_hold_at_their_boundary(key, refused, accepted):
    with pytest.raises(config.ConfigError, match=key):
        config.compose_generate([f"{key}={refused}"])
    assert config.compose_generate([f"{key}={accepted}"])[key] == accepted


@pytest.mark.parametrize("overrides", [["train.fused_lstm=true", "model=gru"], ["train.fused_lstm=true", "train.targets=all"]])
def test_fused_lstm_true_needs_the_book_model(overrides):
    with pytest.raises(config.ConfigError, match=r"train\.fused_lstm true runs the book's model only"):
        config.compose(overrides)
    config.compose(overrides[1:])  # auto (the default) just uses Keras's LSTM there


def test_load_rejects_unknown_keys_and_names_the_file(tmp_path):
    raw = OmegaConf.to_container(config.compose())
    raw["train"]["epochz"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"params\.yaml.*epochz"):
        config.load(path)


def test_load_round_trips_write_params(tmp_path):
    path = tmp_path / "params.yaml"
    written = config.write_params(["vectorize.maxlen=40"], path)
    assert config.load(path) == written
    assert config.load(path).vectorize.maxlen == 40


def test_missing_params_file_says_how_to_make_it(tmp_path):
    with pytest.raises(config.ConfigError, match="python -m pipeline.config"):
        config.load(tmp_path / "params.yaml")


@pytest.mark.parametrize("override, nearest", [
    ("vectorize.maxlenn=40", "vectorize.maxlen"),
    ("+vectorize.maxlenn=40", "vectorize.maxlen"),
    ("vectorise.maxlen=40", "vectorize.maxlen"),
    ("train.learnig_rate=0.1", "train.learning_rate"),
    ("+model.unitz=4", "model.units"),
])
def test_a_typo_in_a_key_names_it_and_the_nearest_valid_key(override, nearest):
    """Not Hydra's hint to append the key with +, which the schema then rejects."""
    with pytest.raises(config.ConfigError) as e:
        config.compose([override])
    message = str(e.value)
    assert message.endswith(f"did you mean {nearest}?") and "To append" not in message
    assert override.lstrip("+").split("=")[0] in message.split(": ", 1)[1]


def test_a_typo_in_a_generate_key_is_named_too():
    with pytest.raises(config.ConfigError, match=r"unknown key lenght; did you mean length\?$"):
        config.compose_generate(["lenght=3"])
