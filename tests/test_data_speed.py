"""The fast input path: LAION-like synthetic shards, JPEG decoding at the scale the crop
needs (same crop distribution, nearly the same pixels), the data benchmark, the
planner's data-bound columns, and a quiet exit."""
import io
import json
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from skimage import data as skimage_data

from data_testing import assert_same_batches, make_config, take
from flip_jax import input_rate
from flip_jax.data import benchmark, pipeline, synth, tokenizer, transforms, wds
from helpers import ROOT

AREA, RATIO = (0.5, 1.0), (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """3 shards of 8 LAION-like samples with 64..160 px sides (the tests crop 16 px, so
  most are decoded at 1/2..1/8 scale)."""
  out = tmp_path_factory.mktemp("synth")
  return synth.write_shards(str(out), 3, 8, seed=1, min_side=64, max_side=160)


def _jpeg(size=(1000, 750), quality=90) -> bytes:
  out = io.BytesIO()
  Image.fromarray(skimage_data.astronaut()).resize(size, Image.BICUBIC).save(
      out, "JPEG", quality=quality)
  return out.getvalue()


# ---- synthetic shards ----------------------------------------------------------------


def test_synth_shards_have_img2dataset_layout_and_are_reproducible(shards, tmp_path):
  with tarfile.open(shards[1]) as tar:
    names = tar.getnames()
    assert names[:3] == ["000010000.jpg", "000010000.txt", "000010000.json"]
    assert len(names) == 3 * 8
    for i in range(8):
      key = f"{10_000 + i:09d}"
      image = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read()))
      meta = json.loads(tar.extractfile(f"{key}.json").read())
      caption = tar.extractfile(f"{key}.txt").read().decode()
      assert image.format == "JPEG" and image.size == (meta["width"], meta["height"])
      assert 64 <= min(image.size) and max(image.size) <= 160
      assert meta["caption"] == caption and 3 <= len(caption.split()) <= 40
  again = synth.write_shards(str(tmp_path), 3, 8, seed=1, min_side=64, max_side=160)
  assert [open(p, "rb").read() for p in again] == [open(p, "rb").read() for p in shards]


# ---- decoding at reduced scale -------------------------------------------------------


def _draws(image, seed, n=1):
  """Crop boxes drawn by RandomResizedCrop on `image` (bytes or array), and its outputs."""
  rng = np.random.default_rng(seed)
  boxes = []
  original = transforms.random_crop_box

  def spy(*args):
    boxes.append(original(*args))
    return boxes[-1]

  transforms.random_crop_box = spy
  try:
    crop = transforms.RandomResizedCrop(224, AREA, RATIO)
    outputs = [crop.crop(image, rng) for _ in range(n)]
  finally:
    transforms.random_crop_box = original
  return boxes, np.stack(outputs)


def test_encoded_and_decoded_images_get_the_same_crops():
  jpeg = _jpeg()
  exact = transforms.to_rgb(jpeg)
  fast_boxes, fast = _draws(jpeg, seed=3, n=40)
  exact_boxes, slow = _draws(exact, seed=3, n=40)
  assert fast_boxes == exact_boxes
  # The DCT's downscaling then bicubic, vs bicubic alone: about one grey level apart.
  diff = np.abs(fast.astype(np.float32) - slow)
  assert diff.mean() < 1.5, diff.mean()
  psnr = 10 * math.log10(255**2 / np.mean(diff**2))
  assert psnr > 38, psnr
  # ... and the crops' pixel statistics agree.
  np.testing.assert_allclose(fast.mean((0, 1, 2)), slow.mean((0, 1, 2)), atol=0.5)
  np.testing.assert_allclose(fast.std((0, 1, 2)), slow.std((0, 1, 2)), rtol=0.02)


def _torchvision_box(height, width, generator):
  """torchvision's RandomResizedCrop.get_params (v0.29), as (left, top, right, bottom)."""
  area = height * width
  log_ratio = torch.log(torch.tensor(RATIO))
  for _ in range(10):
    target_area = area * torch.empty(1).uniform_(*AREA, generator=generator).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(),
                                              generator=generator).item())
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
      left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
      return left, top, left + w, top + h
  in_ratio = width / height
  if in_ratio < min(RATIO):
    w, h = width, int(round(width / min(RATIO)))
  elif in_ratio > max(RATIO):
    w, h = int(round(height * max(RATIO))), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


@pytest.mark.parametrize("size", [(400, 300), (500, 200)])
def test_crop_statistics_are_torchvisions(size):
  """Crops of an encoded JPEG: area fraction, log aspect and centre have torchvision's
  distribution (two-sample KS tests against its algorithm on torch's generator); the
  2.5:1 image needs the centred fallback sometimes."""
  width, height = size
  boxes, _ = _draws(_jpeg(size=size, quality=75), seed=0, n=600)
  generator = torch.Generator().manual_seed(0)
  reference = [_torchvision_box(height, width, generator) for _ in range(3000)]

  def features(b):
    b = np.asarray(b, np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return dict(area=w * h / (width * height), log_aspect=np.log(w / h),
                centre_x=(b[:, 0] + b[:, 2]) / 2 / width,
                centre_y=(b[:, 1] + b[:, 3]) / 2 / height)

  ours, theirs = features(boxes), features(reference)
  for name in ours:
    assert stats.ks_2samp(ours[name], theirs[name]).pvalue > 0.001, name
  assert 0.49 <= ours["area"].min() and ours["area"].max() <= 1.0  # w, h are rounded


def test_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_crop_size():
  jpeg = _jpeg(size=(1000, 750))
  for box in [(0, 0, 1000, 750), (100, 100, 600, 500), (0, 0, 230, 230)]:
    pixels, scaled = transforms.decode_for_crop(jpeg, 224, lambda h, w: box)
    left, top, right, bottom = scaled
    assert right - left >= 224 and bottom - top >= 224
    n = round(8 * pixels.shape[1] / 1000)  # libjpeg-turbo scales by n/8
    assert pixels.shape[:2] == (math.ceil(750 * n / 8), math.ceil(1000 * n / 8))
    if n > 1:  # one scale smaller would leave the crop under 224 px
      assert min((right - left) * (n - 1) / n, (bottom - top) * (n - 1) / n) < 224
  assert transforms.decode_for_crop(jpeg, 224, lambda h, w: (0, 0, 230, 230))[0].shape == (
      750, 1000, 3)


def test_odd_jpegs_and_other_formats_take_pillows_path():
  cmyk = io.BytesIO()
  Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(cmyk, "JPEG")
  png = io.BytesIO()
  Image.new("RGB", (40, 30), (10, 20, 30)).save(png, "PNG")
  for data in (cmyk.getvalue(), png.getvalue()):
    pixels, box = transforms.decode_for_crop(data, 16, lambda h, w: (0, 0, w, h))
    np.testing.assert_array_equal(pixels, transforms.to_rgb(data))
    assert box == (0, 0, 40, 30)
  truncated = _jpeg()[:5000]
  with pytest.raises(OSError):  # Pillow's error: counted as decode_error
    transforms.decode_for_crop(truncated, 16, lambda h, w: (0, 0, w, h))
  with pytest.raises(transforms.ImageTooLarge):
    transforms.decode_for_crop(_jpeg(), 16, lambda h, w: (0, 0, w, h), max_pixels=1000)


def test_flip_left_right():
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.flip_left_right(image), image[:, ::-1])
  assert transforms.flip_left_right(image).flags.c_contiguous


def test_normalize_matches_the_formula():
  images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
  mean, std = (0.48, 0.45, 0.41), (0.27, 0.26, 0.28)
  expected = (images / 255.0 - np.asarray(mean)) / np.asarray(std)
  np.testing.assert_allclose(transforms.normalize(images, mean, std), expected, atol=1e-5)
  with pytest.raises(ValueError, match="channels"):
    transforms.normalize(images[..., :2], mean, std)


# ---- pipeline on the synthetic shards ------------------------------------------------


def _config(shards, **overrides):
  config = make_config(source="wds", data_dir=os.path.join(os.path.dirname(shards[0]),
                                                            "*.tar"),
                       shuffle_buffer=5, **overrides)
  config.batch_size = 4
  return config


def test_worker_processes_resume_exactly_on_jpeg_shards(shards):
  config = _config(shards, num_workers=2)
  captions = [r["text"] for s in shards for r in wds.read_samples(s)]
  tok = tokenizer.TextTokenizer(tokenizer.build_wordpiece(captions), config.text_len)
  iterator = pipeline.build_train(config, tok)
  take(iterator, 4)  # 16 of 24 samples: the workers are mid-shard
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 5)  # into the next epoch
  iterator.close()
  resumed = pipeline.build_train(config, tok)
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 5))
  resumed.close()


def test_an_open_shard_reader_exits_without_a_traceback(shards):
  script = (
      "from data_testing import make_config\n"
      "from flip_jax.data import pipeline, tokenizer\n"
      f"c = make_config(source='wds', data_dir={str(shards[0])!r}, shuffle_buffer=3)\n"
      "c.batch_size = 2\n"
      "tok = tokenizer.TextTokenizer(tokenizer.build_digits_wordpiece(), c.text_len)\n"
      "batches = pipeline.build_train(c, tok)  # alive until the interpreter exits\n"
      "print(next(batches)['image'].shape)\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT}/tests",
                                 JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "(2, 16, 16, 3)"
  assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr


# ---- benchmark and planner -----------------------------------------------------------


def test_benchmark_reports_each_setting_and_the_stages(shards, tmp_path):
  config = _config(shards)
  config.tokenizer = "no-such-org/no-such-tokenizer"  # neither a file nor in the HF cache
  rows = benchmark.run(config, os.path.dirname(shards[0]),
                       num_workers=[0, 1], batches=2, warmup_batches=1, stage_images=12,
                       report=lambda row: None)
  stages, *runs = rows
  assert stages["setting"] == "stages" and stages["images"] == 12
  assert math.isclose(sum(stages["share"].values()), 1.0, abs_tol=0.01)
  assert set(stages["ms_per_image"]) == {"read", "decode", "crop_resize", "flip", "batch",
                                         "tokenise"}
  assert 0 < stages["decoded_pixel_fraction"] < 0.5  # 16 px crops of >= 64 px images
  assert [(r["pipeline"], r["num_workers"], r["cores"]) for r in runs] == [
      ("flip_jax", 0, 1), ("flip_jax", 1, 1)]
  for r in runs:
    assert r["images_per_s"] > 0 and r["images_per_cpu_s"] > 0
    assert r["images_per_s_per_core"] == r["images_per_s"]
    assert r["tokenizer"].startswith("wordpiece learned from 24 captions")
  path = tmp_path / "bench.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  assert input_rate.rate_from_benchmark(str(path), 16) == runs[1]["images_per_cpu_s"]
  with pytest.raises(ValueError, match="image_size"):
    input_rate.rate_from_benchmark(str(path), 224)


def test_data_bound_columns_by_hand():
  row = dict(device_kind="TPU v4", predicted_images_per_s=64_000.0)
  out = input_rate.fields(row, hosts=32, images_per_core_s=10.0, cores=240)
  assert out["images_per_s_needed_per_host"] == 2000.0
  assert out["data_images_per_s_per_host"] == 2400.0
  assert out["data_bound"] is False and out["data_cores_needed_per_host"] == 200.0
  assert input_rate.fields(dict(row, predicted_images_per_s=80_000.0), 32, 10.0,
                           240)["data_bound"] is True
  assert input_rate.fields(dict(device_kind="TPU v4"), 32, 10.0, 240) == {}
  assert [input_rate.host_vcpus(k) for k in ("TPU v3", "TPU v4", "TPU v5 lite", "TPU v5",
                                             "TPU v6 lite", "NVIDIA H100")] == [
      96, 240, 112, 208, 180, None]


def test_plan_cli_adds_the_data_bound_columns(tmp_path):
  bench = tmp_path / "bench.jsonl"
  bench.write_text(json.dumps(dict(pipeline="flip_jax", num_workers=2, image_size=32,
                                   images_per_cpu_s=5.0)) + "\n")
  proc = subprocess.run(
      [sys.executable, "-m", "flip_jax.plan", "--config=configs/flip_debug.py",
       "--topology=v4:2x2x1", "--config.model.image.depth=1", "--config.model.text.depth=1",
       f"--data_benchmark={bench}", "--host_cores=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("{")))
  assert row["hosts"] == 1 and row["host_cores"] == 3
  assert row["data_images_per_s_per_host"] == 15.0
  assert math.isclose(row["images_per_s_needed_per_host"], row["predicted_images_per_s"],
                      rel_tol=1e-5)
  assert row["data_bound"] == (row["predicted_images_per_s"] > 15.0)
  header, line = [l for l in proc.stdout.splitlines() if l and not l.startswith("{")]
  assert header.split()[-2:] == ["data", "bound"] and line.split()[-1] == str(row["data_bound"])
