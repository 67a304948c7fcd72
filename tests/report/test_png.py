"""PNG encoding, read back with a small decoder written here (chunks, CRCs, zlib, filter 0)."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest

from mallory.report.png import (
    data_uri,
    display_size,
    encode_png,
    image_uri,
    perturbation_uri,
)


def decode_png(data: bytes) -> np.ndarray:
    """Pixels of a PNG of 8-bit grayscale or RGB written with filter type 0."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    assert list(chunks)[-1] == b"IEND"
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and colour in (0, 2)
    channels = 1 if colour == 0 else 3
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()
    pixels = rows[:, 1:].reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


def from_uri(uri: str | None) -> np.ndarray:
    assert uri is not None and uri.startswith("data:image/png;base64,")
    return decode_png(base64.b64decode(uri.split(",", 1)[1]))


def test_grayscale_and_rgb_round_trip() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    assert (decode_png(encode_png(gray)) == gray).all()
    assert (decode_png(encode_png(rgb)) == rgb).all()
    assert (from_uri(data_uri(gray)) == gray).all()


@pytest.mark.parametrize("bad", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 4), np.uint8)])
def test_encode_refuses_what_it_cannot_write(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(bad)


def test_digit_is_enlarged_by_nearest_neighbour() -> None:
    digit = np.zeros((28, 28))
    digit[4:24, 13:15] = 1.0  # a "1"
    pixels = from_uri(image_uri(digit.ravel().tolist(), [1, 28, 28], [0.0, 1.0]))
    assert pixels.shape == (112, 112) and display_size([1, 28, 28]) == (112, 112)
    assert (pixels[::4, ::4] == np.round(digit * 255)).all()
    assert (pixels == np.kron(pixels[::4, ::4], np.ones((4, 4), np.uint8))).all()


def test_bounds_map_to_black_and_white() -> None:
    values = [-1.0, 0.0, 1.0, 0.5]
    pixels = from_uri(image_uri(values, [2, 2], [-1.0, 1.0], min_size=2))
    assert pixels.tolist() == [[0, 128], [255, 191]]


def test_colour_images_are_rgb_channels_first() -> None:
    chw = np.zeros((3, 2, 2))
    chw[0] = 1.0  # red everywhere
    chw[2, 0, 0] = 1.0  # plus blue top left
    pixels = from_uri(image_uri(chw.ravel().tolist(), [3, 2, 2], [0.0, 1.0], min_size=2))
    assert pixels.shape == (2, 2, 3)
    assert pixels[0, 0].tolist() == [255, 0, 255] and pixels[1, 1].tolist() == [255, 0, 0]


def test_perturbation_is_gray_at_zero_and_scaled_to_its_largest_change() -> None:
    original = [0.5, 0.5, 0.5, 0.5]
    adversarial = [0.5, 0.6, 0.4, 0.55]
    pixels = from_uri(perturbation_uri(original, adversarial, [1, 2, 2], min_size=2))
    assert pixels.tolist() == [[128, 255], [0, 191]]
    assert perturbation_uri(original, original, [1, 2, 2]) is None  # nothing to show


def test_inputs_that_are_not_images() -> None:
    assert image_uri([0.1] * 9, [9], [0.0, 1.0]) is None  # a tabular row
    assert image_uri([0.1] * 5, [1, 2, 2], [0.0, 1.0]) is None  # wrong size
    assert display_size([9]) is None
