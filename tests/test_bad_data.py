"""Broken training data is skipped and counted by reason; harmless oddities are converted.

The shards mix 32 good samples, each a single-colour image (so a batch tells which samples
it holds: crops and resizes keep the colour), with 14 broken ones (30%) of every kind.
"""
import collections
import io
import json
import logging
import struct
import tarfile
import zlib

import grain
import numpy as np
import pytest
from PIL import Image

from data_testing import make_config
from flip_jax import data, train, writers
from flip_jax.data import digits, quality, transforms, wds
from helpers import tiny_flip_config

MAX_PIXELS = 40 * 40
SIZE = 24  # good images: 24x24 <= MAX_PIXELS


def _encode(image: Image.Image, fmt: str) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt)
  return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
  """A tiny PNG whose header claims width x height: a decompression bomb's signature."""
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload +
            struct.pack(">I", zlib.crc32(kind + payload)))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                             2, 0, 0, 0)) +
          chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _good_image(i: int) -> tuple[str, bytes]:
  """Sample i's image in one of the modes that get converted, in a colour of its own."""
  colour = (7 * i + 10, 250 - 7 * i, (53 * i) % 200 + 20)
  kind = i % 8
  if kind == 0:
    return "jpg", _encode(Image.new("CMYK", (SIZE, SIZE), (*colour, 0)), "JPEG")
  if kind == 1:
    return "png", _encode(Image.new("L", (SIZE, SIZE), colour[0]), "PNG")
  if kind == 2:
    return "png", _encode(Image.new("RGBA", (SIZE, SIZE), (*colour, 128)), "PNG")
  if kind == 3:  # 16-bit grey
    return "png", _encode(Image.fromarray(np.full((SIZE, SIZE), colour[1] * 257, np.uint16)),
                          "PNG")
  return ("jpg", "png")[kind % 2], _encode(Image.new("RGB", (SIZE, SIZE), colour),
                                           ("JPEG", "PNG")[kind % 2])


def _broken_samples() -> list[tuple[str, dict, str]]:
  """(key, members, reason): every kind of broken sample, 14 in all."""
  jpeg = _encode(Image.new("RGB", (SIZE, SIZE), (1, 2, 3)), "JPEG")
  png = _encode(Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (SIZE, SIZE, 3), dtype=np.uint8)), "PNG")
  big = _encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
  caption = b"a photo of the digit one"
  return [
      ("trunc_a", {"jpg": jpeg[:len(jpeg) // 2], "txt": caption}, "decode_error"),
      ("trunc_b", {"jpg": jpeg[:len(jpeg) // 3], "txt": caption}, "decode_error"),
      ("trunc_png", {"png": png[:len(png) // 2], "txt": caption}, "decode_error"),
      ("zero_a", {"jpg": b"", "txt": caption}, "empty_file"),
      ("zero_b", {"png": b"", "txt": caption}, "empty_file"),
      ("junk_a", {"jpg": b"<html>not found</html>", "txt": caption}, "not_an_image"),
      ("junk_b", {"webp": bytes(range(256)), "txt": caption}, "not_an_image"),
      ("bomb", {"png": _png_header_only(100_000, 100_000), "txt": caption}, "too_large"),
      ("big", {"jpg": big, "txt": caption}, "too_large"),
      ("no_words", {"jpg": jpeg, "txt": b""}, "empty_caption"),
      ("blank", {"jpg": jpeg, "txt": b"  \n\t"}, "empty_caption"),
      ("latin1", {"jpg": jpeg, "txt": "caf\xe9".encode("latin-1")}, "bad_caption"),
      ("lonely_image", {"jpg": jpeg}, "missing_caption"),
      ("lonely_caption", {"txt": caption}, "missing_image"),
  ]


def write_shards(folder, num_shards: int):
  """Tar shards of the 46 samples (good and broken interleaved, each shard ending on a
  good one); returns (glob, expected skip counts, {key: RGB colour} of the good ones)."""
  good = []
  for i in range(32):
    ext, image = _good_image(i)
    caption = digits.captions(i % 10)[0].encode()
    good.append((f"good_{i:02d}", {ext: image, "txt": caption}))
  broken = _broken_samples()
  colours = {key: tuple(transforms.to_rgb(next(v for k, v in m.items() if k != "txt"))[0, 0])
             for key, m in good}
  assert len(set(colours.values())) == 32  # each good sample identifiable by its colour
  for s in range(num_shards):
    mine = good[s::num_shards]
    samples = [x for pair in zip(mine, [b[:2] for b in broken[s::num_shards]]) for x in pair]
    samples += [x for x in mine[len(samples) // 2:]]
    assert samples[-1][0].startswith("good")
    with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
      for key, members in samples:
        for ext, payload in members.items():
          info = tarfile.TarInfo(f"{key}.{ext}")
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  expected = collections.Counter(reason for *_, reason in broken)
  return str(folder / "*.tar"), dict(expected), colours


def colours_in(batch, config) -> list[tuple]:
  """The colour of each image of a batch (uint8; images are single-coloured)."""
  del config
  pixels = batch["image"].astype(int)
  assert (pixels == pixels[:, :1, :1]).all()
  return [tuple(p) for p in pixels[:, 0, 0]]


def expected_counts(expected: dict, times: int = 1) -> dict:
  return {r: expected.get(r, 0) * times for r in quality.REASONS}


def test_broken_samples_in_a_shard_are_skipped_counted_and_training_goes_on(
    tmp_path, monkeypatch):
  (tmp_path / "shards").mkdir()
  pattern, expected, colours = write_shards(tmp_path / "shards", num_shards=1)
  config = tiny_flip_config()
  config.data.update(source="wds", data_dir=pattern, shuffle_buffer=1, flip=False,
                     max_image_pixels=MAX_PIXELS)
  config.batch_size, config.total_samples = 8, 32  # 4 steps: each good sample once
  config.log_every_steps = 1

  seen = []

  class Spy(grain.DatasetIterator):
    def __next__(self):
      batch = next(self._parent)
      seen.extend(colours_in(batch, config))
      return batch

    def get_state(self):
      return self._parent.get_state()

    def set_state(self, state):
      self._parent.set_state(state)

  build = data.build_train
  monkeypatch.setattr(data, "build_train", lambda *a, **k: Spy(build(*a, **k)))
  train.run(config, str(tmp_path / "run"))
  rows = [r for r in writers.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
          if "loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
  skipped = {k.removeprefix("data/skipped/"): v for k, v in rows[-1].items()
             if k.startswith("data/skipped/")}
  assert skipped == expected
  assert sum(skipped.values()) == 14
  assert sorted(seen) == sorted(colours.values())  # every good sample, once


def test_counts_reach_the_main_process_from_workers_and_survive_resume(tmp_path):
  pattern, expected, colours = write_shards(tmp_path, num_shards=2)
  config = make_config(source="wds", data_dir=pattern, shuffle_buffer=1, flip=False,
                       max_image_pixels=MAX_PIXELS, num_workers=2)
  config.batch_size = 8
  tokenizer = data.get_tokenizer(config, tmp_path)
  iterator = data.build_train(config, tokenizer)
  seen = [c for _ in range(4) for c in colours_in(next(iterator), config)]
  assert sorted(seen) == sorted(colours.values())
  assert quality.skip_counts(iterator) == expected_counts(expected)
  state = json.loads(json.dumps(iterator.get_state()))  # what the checkpoint holds
  iterator.close()
  resumed = data.build_train(config, tokenizer)
  resumed.set_state(state)
  assert quality.skip_counts(resumed) == expected_counts(expected)
  for _ in range(4):  # the second epoch
    next(resumed)
  assert quality.skip_counts(resumed) == expected_counts(expected, times=2)
  resumed.close()


def test_unreadable_shards_are_logged_and_skipped(tmp_path, caplog):
  write_shards(tmp_path, num_shards=1)
  good = str(tmp_path / "00000.tar")
  garbage = tmp_path / "garbage.tar"
  garbage.write_bytes(bytes(range(256)) * 8)
  cut = tmp_path / "cut.tar"
  with tarfile.open(good) as tar:  # break off inside the data of a member half-way in
    member = next(m for m in tar.getmembers()[len(tar.getmembers()) // 2:] if m.size > 200)
  cut.write_bytes(open(good, "rb").read()[:member.offset_data + 100])
  missing = str(tmp_path / "missing.tar")
  shards = [good, str(garbage), str(cut), missing]
  caplog.set_level(logging.WARNING)
  records = iter(wds.TarSampleDataset(shards, seed=0))
  per_epoch = len(list(wds.read_shard(good))) + len(list(wds.read_shard(str(cut)))) + 2
  epoch = [next(records) for _ in range(per_epoch)]
  unreadable = sorted(r["key"] for r in epoch if r.get("skipped") == "unreadable_shard")
  assert unreadable == sorted([str(garbage), str(cut), missing])
  assert sum(1 for r in epoch if "skipped" not in r) > 32  # the good shard and half of cut
  for path in (garbage, cut, missing):
    assert str(path) in caplog.text


def test_harmless_modes_are_converted_to_rgb():
  grey16 = np.full((4, 4), 0xAB12, np.uint16)
  assert (transforms.to_rgb(_encode(Image.fromarray(grey16), "PNG")) == 0xAB).all()
  assert transforms.to_rgb(grey16).shape == (4, 4, 3)
  rgba = _encode(Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "PNG")
  assert (transforms.to_rgb(rgba) == (10, 20, 30)).all()
  cmyk = transforms.to_rgb(_encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
  assert cmyk.dtype == np.uint8 and cmyk.shape == (4, 4, 3)
  assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 50  # cyan-free, magenta+yellow: red
  with pytest.raises(transforms.ImageTooLarge):
    transforms.to_rgb(_encode(Image.new("RGB", (50, 40)), "PNG"), max_pixels=1999)
