"""Reading a user's image (pipeline/pictures.py, for the image-optimisation generators): every
PIL mode converted to RGB, EXIF orientation honoured, resizing, and the refusals (not an image,
truncated, too small, too many pixels: refused from the header, before decoding)."""
import numpy as np
import pytest
from PIL import Image

from pipeline.pictures import ImageError, read_image, tile

LIMIT = 10_000_000


def test_grey_alpha_palette_16_bit_and_cmyk_become_rgb(tmp_path):
    grey = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) % 256
    Image.fromarray(grey.astype(np.uint8), "L").save(tmp_path / "grey.png")
    out = read_image(tmp_path / "grey.png", None, LIMIT, 8)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 2], grey)

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 20:, 3] = 255  # left half transparent: white shows through
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = read_image(tmp_path / "alpha.png", None, LIMIT, 8)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 30].tolist() == [200, 0, 0]

    pal = Image.new("P", (32, 32))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((5, 5), 1)
    pal.save(tmp_path / "palette.png")
    out = read_image(tmp_path / "palette.png", None, LIMIT, 8)
    assert out[0, 0].tolist() == [10, 20, 30] and out[5, 5].tolist() == [200, 100, 50]

    deep = np.full((32, 32), 65535, np.uint16)
    deep[:, :16] = 257 * 100
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit grey
    out = read_image(tmp_path / "deep.png", None, LIMIT, 8)
    assert out[0, 0].tolist() == [100, 100, 100] and out[0, 31].tolist() == [255, 255, 255]

    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    r, g, b = read_image(tmp_path / "cmyk.jpg", None, LIMIT, 8)[16, 16].tolist()
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_honoured_and_the_longer_side_resized(tmp_path):
    img = np.zeros((30, 60, 3), np.uint8)
    img[:, :30] = 255  # white on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "turned.jpg", None, LIMIT, 8)
    assert out.shape == (60, 30, 3) and out[5, 15].mean() > 200 and out[55, 15].mean() < 50  # white now on top
    assert read_image(tmp_path / "turned.jpg", 120, LIMIT, 8).shape == (120, 60, 3)


def test_bad_images_are_refused_in_one_line_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:5000])
    Image.new("RGB", (40, 20)).save(tmp_path / "small.png")
    cases = {"text.png": "not an image", "cut.png": "damaged or truncated", "missing.png": "no such file",
             "small.png": "40 x 20 after resizing, smaller than the network's 32 pixels a side"}
    for name, message in cases.items():
        with pytest.raises(ImageError, match=name) as e:
            read_image(tmp_path / name, None, LIMIT, 32)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_an_image_above_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    from PIL import ImageFile

    Image.new("L", (4000, 3000)).save(tmp_path / "big.png")  # small file, 12 million pixels
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or load(self))
    with pytest.raises(ImageError, match=r"big.png: 4000 x 3000 = 12,000,000 pixels, above the limit of 10,000,000"):
        read_image(tmp_path / "big.png", 300, LIMIT, 32)
    assert decoded == []


def test_tiles_are_laid_out_with_grey_gutters():
    images = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 3, 4, 5, 3)
    out = tile(images)
    assert out.shape == (2 * 6 + 2, 3 * 7 + 2, 3) and (out[0] == 128).all() and (out[:, 0] == 128).all()
    assert np.array_equal(out[2 + 6:2 + 6 + 4, 2 + 2 * 7:2 + 2 * 7 + 5], images[1, 2])
