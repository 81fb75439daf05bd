"""The shared pretrained-network loader (pipeline/networks.py): `weights: imagenet` goes through
keras.applications' own download, a failed download names the offline override, a weights file
by path loads, bad names are refused. No network: the download is replaced by a local file."""
import numpy as np
import pytest

from pipeline import networks


def _saved_vgg16(path):
    import keras

    keras.utils.set_random_seed(11)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    model.save_weights(path)
    return model.get_weights()


def test_imagenet_weights_come_through_keras_applications_download(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    saved = _saved_vgg16(tmp_path / "vgg16_notop.weights.h5")
    asked = []

    def get_file(fname=None, origin=None, **kwargs):
        asked.append((fname, origin))
        return str(tmp_path / "vgg16_notop.weights.h5")

    monkeypatch.setattr(file_utils, "get_file", get_file)
    model = networks.build("vgg16", "imagenet", (32, 32, 3))
    assert len(asked) == 1 and asked[0][0].startswith("vgg16_weights") and asked[0][1].startswith("https://")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), saved, strict=True))


def test_a_failed_download_says_which_override_works_offline(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(networks.NetworkError, match="cannot get vgg19's ImageNet weights .*use network=vgg16 weights=hed"):
        networks.build("vgg19", "imagenet", (32, 32, 3))


def test_weights_by_path_load_and_bad_names_are_refused(tmp_path):
    saved = _saved_vgg16(tmp_path / "mine.weights.h5")
    model = networks.build("vgg16", str(tmp_path / "mine.weights.h5"), (32, 32, 3))
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), saved, strict=True))
    with pytest.raises(networks.NetworkError, match="no such file"):
        networks.build("vgg16", str(tmp_path / "missing.weights.h5"))
    with pytest.raises(networks.NetworkError, match="unknown network 'vgg17'"):
        networks.build("vgg17", "random")
    with pytest.raises(networks.NetworkError, match="has no layer 'block9_conv1'"):
        networks.feature_extractor("vgg16", "random", "block9_conv1", (32, 32, 3))
    (tmp_path / "junk.weights.h5").write_text("not hdf5")
    with pytest.raises(networks.NetworkError, match="junk.weights.h5: cannot load into vgg16"):
        networks.build("vgg16", str(tmp_path / "junk.weights.h5"), (32, 32, 3))
