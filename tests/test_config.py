
import pytest
import yaml
from omegaconf import OmegaConf

from pipeline import config
from pipeline.text.config import compose_generate, temperatures
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
    overrides = ["experiment=tiny", "text.sample.temperature=0.7"]
    config.write_params(overrides, ours)
    compose_and_dump(dvcs, str(REPO / "conf"), None, "config", str(tmp_path), overrides)
    assert ours.read_text() == dvcs.read_text()


def test_defaults_are_the_books_recipe():
    cfg = config.compose().text
    assert (cfg.corpus.name, cfg.vectorize.lowercase, cfg.vectorize.maxlen, cfg.vectorize.step) == ("nietzsche", True, 60, 3)
    assert (cfg.model.name, cfg.model.units) == ("lstm", 128)
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.batch_size) == ("rmsprop", 0.01, 128)
    assert list(cfg.train.epoch_samples.temperatures) == [0.2, 0.5, 1.0, 1.2]
    assert temperatures(cfg.sample.temperature) == [0.2, 0.5, 1.0, 1.2]
    assert cfg.vectorize.val_fraction == 0.1


def test_tiny_experiment_and_single_temperature():
    cfg = config.compose(["experiment=tiny", "text.sample.temperature=0.5"]).text
    assert (cfg.vectorize.max_chars, cfg.model.units, cfg.train.epochs) == (20000, 16, 2)
    assert temperatures(cfg.sample.temperature) == [0.5]


def test_config_is_read_only():
    cfg = config.compose()
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.text.vectorize.maxlen = 3
    with pytest.raises(ReadonlyConfigError):
        config.section(cfg, "vae").train.epochs = 3


@pytest.mark.parametrize("override, key", [
    ("text.vectorize.maxlen=0", "text.vectorize.maxlen"),
    ("text.vectorize.step=-1", "text.vectorize.step"),
    ("text.vectorize.val_fraction=0", "text.vectorize.val_fraction"),
    ("text.vectorize.val_fraction=1.0", "text.vectorize.val_fraction"),
    ("text.model.units=0", "text.model.units"),
    ("text.vectorize.val_step=0", "text.vectorize.val_step"),
    ("text.train.targets=some", "text.train.targets"),
    ("text.train.time_limit=0", "text.train.time_limit"),
    ("text.train.learning_rate=0", "text.train.learning_rate"),
    ("text.train.learning_rate=-0.1", "text.train.learning_rate"),
    ("text.train.epochs=0", "text.train.epochs"),
    ("text.train.batch_size=0", "text.train.batch_size"),
    ("text.train.batch_parts=0", "text.train.batch_parts"),
    ("text.train.batch_parts=many", "text.train.batch_parts"),
    ("text.train.batch_parts=true", "text.train.batch_parts"),
    ("text.train.batch_parts=1.5", "text.train.batch_parts"),
    ("text.train.fused_lstm=1", "text.train.fused_lstm"),
    ("text.train.fused_lstm=maybe", "text.train.fused_lstm"),
    ("text.train.optimizer=adagrad", "text.train.optimizer"),
    ("text.sample.temperature=0", "text.sample.temperature"),
    ("text.sample.temperature=-1", "text.sample.temperature"),
    ("text.sample.temperature=[0.5,0]", "text.sample.temperature"),
    ("text.sample.temperature=nan", "text.sample.temperature"),
    ("text.sample.temperature=inf", "text.sample.temperature"),
    ("text.sample.temperature=hot", "text.sample.temperature"),
    ("text.train.epoch_samples.temperatures=[0.0]", "text.train.epoch_samples.temperatures"),
    ("text.sample.mode=sideways", "text.sample.mode"),
    ("text.vectorize.maxlen=abc", "text.vectorize.maxlen"),
    ("text.vectorize.lowercase=maybe", "text.vectorize.lowercase"),
    ("text.vectorize.colour=red", "text.vectorize.colour"),
    ("+text.vectorize.colour=red", "colour"),
    ("text.corpus.sha256=abc", "text.corpus.sha256"),
    ("vae.data.content_sha256=abc", "vae.data.content_sha256"),
    ("vae.train.optimizer=adagrad", "vae.train.optimizer"),
    ("vae.model.filters=[32,64,64]", "vae.model.filters"),
    ("vae.sample.concept=[3,3]", "vae.sample.concept"),
    ("vae.sample.interpolate=[1]", "vae.sample.interpolate"),
    ("generator=gans", "generator"),
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
    ([], "text.vectorize.maxlen", 0, 1),
    ([], "text.vectorize.step", 0, 1),
    ([], "text.vectorize.val_step", 0, 1),
    ([], "text.vectorize.max_chars", 1, 2),
    ([], "text.vectorize.val_fraction", 0, 0.001),
    ([], "text.vectorize.val_fraction", 1.0, 0.999),
    ([], "text.model.units", 0, 1),
    (["text/model=stacked_lstm"], "text.model.layers", 0, 1),
    (["text/model=stacked_lstm"], "text.model.dropout", -0.01, 0),
    (["text/model=stacked_lstm"], "text.model.dropout", 1.0, 0.99),
    (["text/model=gru"], "text.model.embedding", 0, 1),
    (["text/model=conv1d"], "text.model.kernel_size", 1, 2),
    (["text/model=conv1d"], "text.model.dilations", [0], [1]),
    ([], "text.train.learning_rate", 0, 1e-9),
    ([], "text.train.batch_size", 0, 1),
    ([], "text.train.steps_per_execution", 0, 1),
    ([], "text.train.batch_parts", 0, 1),
    ([], "text.train.epochs", 0, 1),
    ([], "text.train.time_limit", 0, 0.001),
    ([], "text.train.shuffle_buffer", -1, 0),
    ([], "text.train.clipnorm", 0, 1e-6),
    ([], "text.train.plateau.factor", 0, 0.01),
    ([], "text.train.plateau.factor", 1.0, 0.99),
    ([], "text.train.plateau.patience", 0, 1),
    ([], "text.train.plateau.min_lr", 0, 1e-9),
    ([], "text.train.divergence.max_ratio", 1.0, 1.01),
    ([], "text.train.divergence.max_rollbacks", -1, 0),
    ([], "text.train.epoch_samples.length", 0, 1),
    ([], "text.train.epoch_samples.temperatures", [0.0], [0.01]),
    ([], "text.sample.length", 0, 1),
    ([], "text.sample.temperature", 0, 0.01),
    ([], "text.fetch.timeout", 0, 0.1),
    ([], "text.mlflow.serve_max_length", 0, 1),
    ([], "vae.model.filters", [0], [1]),
    ([], "vae.model.dense", 0, 1),
    ([], "vae.model.latent_dim", 0, 1),
    ([], "vae.train.beta", -0.01, 0),
    ([], "vae.train.learning_rate", 0, 1e-9),
    ([], "vae.train.batch_size", 0, 1),
    ([], "vae.train.epochs", 0, 1),
    ([], "vae.train.reconstructions", 0, 1),
    ([], "vae.train.train_digits", 0, 1),
    ([], "vae.train.test_digits", 0, 1),
    ([], "vae.train.plateau.factor", 1.0, 0.99),
    ([], "vae.train.divergence.max_ratio", 1.0, 1.01),
    ([], "vae.evaluate.iwae_samples", 0, 1),
    ([], "vae.evaluate.images", 0, 1),
    ([], "vae.evaluate.batch_size", 0, 1),
    ([], "vae.sample.grid", 0, 1),
    ([], "vae.sample.samples", 0, 1),
    ([], "vae.sample.steps", 1, 2),
    ([], "vae.sample.concept_digits", 0, 1),
    ([], "vae.data.timeout", 0, 0.1),
    ([], "style.size", 31, 32),
    ([], "style.recipes.vgg16.style_layers", [], ["block1_conv1"]),
    ([], "style.recipes.vgg16.content_weight", -0.01, 0),
    ([], "style.recipes.vgg16.style_weight", -0.01, 0),
    ([], "style.recipes.vgg16.tv_weight", -0.01, 0),
    ([], "style.optimizer.learning_rate", 0, 1e-9),
    ([], "style.optimizer.decay_steps", 0, 1),
    ([], "style.optimizer.decay_rate", 0, 0.01),
    ([], "style.optimizer.decay_rate", 1.01, 1.0),
    ([], "style.evaluations", 0, 1),
    ([], "style.image_every", 0, 1),
    ([], "style.images.content.max_pixels", 0, 1),
    ([], "style.images.style.timeout", 0, 0.1),
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
        compose_generate([f"{key}={refused}"])
    assert compose_generate([f"{key}={accepted}"])[key] == accepted


@pytest.mark.parametrize("overrides", [["text.train.fused_lstm=true", "text/model=gru"], ["text.train.fused_lstm=true", "text.train.targets=all"]])
def test_fused_lstm_true_needs_the_book_model(overrides):
    with pytest.raises(config.ConfigError, match=r"train\.fused_lstm true runs the book's model only"):
        config.compose(overrides)
    config.compose(overrides[1:])  # auto (the default) just uses Keras's LSTM there


def test_load_rejects_unknown_keys_and_names_the_file(tmp_path):
    raw = OmegaConf.to_container(config.compose())
    raw["vae"]["train"]["epochz"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"params\.yaml.*epochz"):
        config.load(path)


def test_load_round_trips_write_params(tmp_path):
    path = tmp_path / "params.yaml"
    written = config.write_params(["text.vectorize.maxlen=40"], path)
    assert config.load(path) == written
    assert config.load(path).text.vectorize.maxlen == 40


def test_missing_params_file_says_how_to_make_it(tmp_path):
    with pytest.raises(config.ConfigError, match="python -m pipeline.config"):
        config.load(tmp_path / "params.yaml")


@pytest.mark.parametrize("override, nearest", [
    ("text.vectorize.maxlenn=40", "text.vectorize.maxlen"),
    ("+text.vectorize.maxlenn=40", "text.vectorize.maxlen"),
    ("text.vectorise.maxlen=40", "text.vectorize.maxlen"),
    ("text.train.learnig_rate=0.1", "text.train.learning_rate"),
    ("+text.model.unitz=4", "text.model.units"),
    ("vae.model.latent_dims=4", "vae.model.latent_dim"),
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
        compose_generate(["lenght=3"])
