"""flip_jax.data on the embedded digits set: split, tokenizer, transforms, batches,
determinism, resume (plain state and Orbax), host sharding, zero-shot eval data."""
import io
import subprocess
import sys

import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from data_testing import SIZE, assert_resumes_exactly, assert_same_batches, make_config, take
from flip_jax import data
from flip_jax.data import digits
from flip_jax.data import sources
from flip_jax.data import tokenizer as tokenizer_lib
from flip_jax.data import transforms
from flip_jax.objectives import base as objectives_base


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  return data.get_tokenizer(make_config(), tmp_path_factory.mktemp("workdir"))


# ---- digits --------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_disjoint():
  train_images, train_labels = digits.load_split("train")
  test_images, test_labels = digits.load_split("test")
  assert (len(train_labels), len(test_labels)) == (1437, 360)
  assert train_images.shape == (1437, 8, 8, 3) and train_images.dtype == np.uint8
  assert train_images.max() == 255 and train_images.min() == 0
  per_class = np.bincount(train_labels) + np.bincount(test_labels)
  assert np.abs(np.bincount(test_labels) - 0.2 * per_class).max() <= 1  # stratified
  keys = [r["key"] for r in digits.DigitsSource("train")]
  assert len(set(keys)) == 1437
  assert len(digits.CLASS_NAMES) == 10 and digits.CLASS_NAMES[7] == "seven"


def test_captions_name_the_class():
  for caption in digits.captions(7):
    assert "seven" in caption or "7" in caption
  assert len(set(digits.captions(3))) == len(digits.CAPTION_TEMPLATES)


# ---- tokenizer -----------------------------------------------------------------------


def test_tokenizer_round_trip_bert_layout(tokenizer):
  texts = ["A photo of the digit Seven", "the number 7"]
  ids = tokenizer.encode(texts)
  assert ids.shape == (2, 32) and ids.dtype == np.int32
  cls_id = tokenizer_lib.SPECIAL_TOKENS.index("[CLS]")
  assert (ids[:, 0] == cls_id).all()
  lengths = (ids != tokenizer.pad_id).sum(1)
  assert (ids[np.arange(2), lengths - 1] == tokenizer.eos_id).all()
  assert tokenizer.decode(ids) == [t.lower() for t in texts]
  assert (ids < tokenizer.vocab_size).all()


def test_tokenizer_truncates_keeping_eos_last(tokenizer):
  ids = tokenizer.encode(["a handwritten seven " * 20])
  assert ids[0, -1] == tokenizer.eos_id and tokenizer.pad_id not in ids


def test_tokenizer_is_deterministic_saved_and_reloaded(tmp_path):
  config = make_config()
  first = data.get_tokenizer(config, tmp_path / "a")
  saved = (tmp_path / "a" / "tokenizer.json").read_text()
  data.get_tokenizer(config, tmp_path / "b")
  assert (tmp_path / "b" / "tokenizer.json").read_text() == saved  # same vocab every time
  (tmp_path / "a" / "tokenizer.json").write_text(saved.replace('"seven"', '"sevenx"'))
  reloaded = data.get_tokenizer(config, tmp_path / "a")  # reads the file, no rebuilding
  count = lambda tok: int((tok.encode(["seven"]) != tok.pad_id).sum())
  assert count(first) == 3 and count(reloaded) == 7  # [CLS] s ##e ##v ##e ##n [SEP]
  for spec in (tmp_path / "b", tmp_path / "b" / "tokenizer.json"):  # dir and file
    config.tokenizer = str(spec)
    np.testing.assert_array_equal(data.get_tokenizer(config, tmp_path / "c").encode(
        digits.all_texts()), first.encode(digits.all_texts()))


# ---- transforms ----------------------------------------------------------------------


def _encoded(array, mode, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).convert(mode).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"),
                                      ("RGB", "JPEG"), ("P", "PNG")])
def test_decode_gives_rgb_uint8(mode, fmt):
  array = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
  image = transforms.to_rgb(_encoded(array, mode, fmt))
  assert image.shape == (12, 20, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("shape", [(12, 20), (12, 20, 1), (12, 20, 4)])
def test_decode_arrays(shape):
  image = transforms.to_rgb(np.zeros(shape, np.uint8))
  assert image.shape == (12, 20, 3)


def test_random_crop_box_respects_area_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, right, bottom = transforms.random_crop_box(300, 451, (0.5, 1.0),
                                                          (3 / 4, 4 / 3), rng)
    w, h = right - left, bottom - top
    assert 0 <= left < right <= 451 and 0 <= top < bottom <= 300
    assert 0.5 - 0.01 <= w * h / (300 * 451) <= 1.0
    assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01
  # No crop of a 1x100 strip has ratio in [3/4, 4/3]: the centred fallback is used.
  assert transforms.random_crop_box(100, 1, (0.5, 1.0), (3 / 4, 4 / 3), rng) == (
      0, 49, 1, 50)


def test_random_resized_crop_output_and_determinism():
  image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
  crop = transforms.RandomResizedCrop(SIZE, (0.5, 1.0), (3 / 4, 4 / 3))
  out = [crop.random_map({"image": image}, np.random.default_rng(seed))["image"]
         for seed in (1, 1, 2)]
  assert out[0].shape == (SIZE, SIZE, 3) and out[0].dtype == np.uint8
  np.testing.assert_array_equal(out[0], out[1])
  assert not np.array_equal(out[0], out[2])


def test_normalisation_statistics(tokenizer):
  config = make_config()
  mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
  pixels = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
  normalised = transforms.normalize(pixels, mean, std)
  assert normalised.dtype == np.float32
  np.testing.assert_allclose(normalised.mean((0, 1, 2)),
                             (pixels.mean((0, 1, 2)) / 255 - mean) / std, rtol=1e-5)
  np.testing.assert_allclose(normalised.std((0, 1, 2)),
                             pixels.std((0, 1, 2)) / 255 / std, rtol=1e-4)
  # What the train step does to the pipeline's uint8 batches (Objective.prepare).
  on_device = objectives_base.normalize_on_device(jnp.asarray(pixels), mean, std)
  np.testing.assert_allclose(on_device, normalised, rtol=1e-6, atol=1e-6)


# ---- training pipeline on digits -----------------------------------------------------


def test_batch_shapes_and_dtypes(tokenizer):
  batch = next(data.build_train(make_config(), tokenizer))
  assert set(batch) == {"image", "text"}
  assert batch["image"].shape == (16, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (16, 32) and batch["text"].dtype == np.int32
  captions = tokenizer.decode(batch["text"])
  assert all(any(w in c for w in digits.CLASS_NAMES + tuple("0123456789"))
             for c in captions)


def test_same_seed_same_batches_other_seed_other_batches(tokenizer):
  config = make_config()
  first = take(data.build_train(config, tokenizer), 3)
  assert_same_batches(first, take(data.build_train(config, tokenizer), 3))
  config.seed = 1
  other = next(data.build_train(config, tokenizer))
  assert not np.array_equal(first[0]["image"], other["image"])


def test_resume_from_state_across_an_epoch_boundary(tokenizer):
  config = make_config()
  config.batch_size = 128  # 1437 training images: batch 12 straddles the epoch end
  iterator = data.build_train(config, tokenizer)
  take(iterator, 10)
  state = iterator.get_state()
  expected = take(iterator, 3)
  resumed = data.build_train(config, tokenizer)
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 3))


def test_orbax_saves_and_restores_the_iterator_with_the_train_state(tokenizer, tmp_path):
  config = make_config()
  iterator = data.build_train(config, tokenizer)
  take(iterator, 2)
  params = {"w": np.arange(3.0)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = take(iterator, 2)
  resumed = data.build_train(config, tokenizer)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    restored = manager.restore(2, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(params),
        data=grain.checkpoint.CheckpointRestore(resumed)))
  assert restored["data"] is resumed
  np.testing.assert_array_equal(restored["params"]["w"], params["w"])
  assert_same_batches(expected, take(resumed, 2))


def test_worker_processes_resume_exactly(tokenizer):
  assert_resumes_exactly(make_config(num_workers=2), tokenizer, skip=3, check=2)


def test_hosts_read_disjoint_slices_that_cover_the_data(tokenizer):
  config = make_config()
  keys = [{r["key"] for r in sources.host_records(config, index, 2, seed=0)}
          for index in range(2)]
  assert not keys[0] & keys[1]
  assert keys[0] | keys[1] == {r["key"] for r in digits.DigitsSource("train")}
  local = [next(data.build_train(config, tokenizer, process_index=i, process_count=2))
           for i in range(2)]
  assert local[0]["image"].shape == (8, SIZE, SIZE, 3)
  assert not np.array_equal(local[0]["image"], local[1]["image"])


def test_data_imports_no_model_objective_or_trainer_code():
  loaded = subprocess.run(
      [sys.executable, "-c", "import sys, flip_jax.data; print(' '.join(sys.modules))"],
      check=True, capture_output=True, text=True).stdout.split()
  forbidden = ("flip_jax.models", "flip_jax.objectives", "flip_jax.train")
  assert not [m for m in loaded if m.startswith(forbidden)]
