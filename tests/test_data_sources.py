"""flip_jax.data's file-backed sources on data the tests write themselves: WebDataset tar
shards and TFDS ArrayRecord datasets made by `flip_jax.data.pack` (or a tiny TFDS builder)
from digits and scikit-image photos; batches, determinism, resume, host sharding."""
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from data_testing import (SIZE, DigitsTfds, assert_resumes_exactly, assert_same_batches,
                          make_config, take)
from flip_jax import data
from flip_jax.data import digits
from flip_jax.data import pack
from flip_jax.data import sources
from flip_jax.data import wds
from flip_jax.evaluate import datasets

NUM_IMAGES = 24  # 20 digits + 4 photos (RGB, grayscale, RGBA, CMYK)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  return data.get_tokenizer(make_config(), tmp_path_factory.mktemp("workdir"))


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
  """(folder, captions file) with files of several formats and colour modes."""
  folder = tmp_path_factory.mktemp("images")
  images, labels = digits.load_split("train")
  lines = []
  for i in range(20):
    Image.fromarray(images[i, :, :, 0], "L").save(folder / f"digit_{i}.png")
    lines.append(f"digit_{i}.png\t{digits.captions(int(labels[i]))[0]}")
  photos = [("astronaut.jpg", skimage_data.astronaut(), "RGB", "an astronaut"),
            ("camera.png", skimage_data.camera(), "L", "a cameraman"),
            ("logo.png", skimage_data.logo(), "RGBA", "a logo"),
            ("coffee.jpeg", skimage_data.coffee(), "CMYK", "a cup of coffee")]
  for name, array, mode, caption in photos:
    image = Image.fromarray(array).convert(mode)
    image.thumbnail((64, 64))  # small photos keep the tests fast
    image.save(folder / name)
    lines.append(f"{name}\t{caption}")
  captions = folder / "captions.tsv"
  captions.write_text("\n".join(lines) + "\n")
  return folder, captions


@pytest.fixture(scope="session")
def wds_glob(image_folder, tmp_path_factory):
  folder, captions = image_folder
  out = tmp_path_factory.mktemp("shards")
  paths = pack.pack_tar(str(folder), pack.read_captions(str(captions)), str(out), 5)
  assert len(paths) == 5
  return str(out / "*.tar")


# ---- pack ----------------------------------------------------------------------------


def test_pack_command_line_writes_webdataset_shards(image_folder, tmp_path):
  folder, captions = image_folder
  subprocess.run([sys.executable, "-m", "flip_jax.data.pack", f"--images={folder}",
                  f"--captions={captions}", "--format=tar", f"--out={tmp_path}",
                  "--shard_size=10"], check=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00001.tar",
                                                         "00002.tar"]
  with tarfile.open(tmp_path / "00002.tar") as tar:
    assert tar.getnames()[-4:] == ["000000022.png", "000000022.txt", "000000023.jpg",
                                   "000000023.txt"]


# ---- WebDataset tar shards -----------------------------------------------------------


def wds_config(pattern, **overrides):
  return make_config(source="wds", data_dir=pattern, shuffle_buffer=7, **overrides)


def test_wds_batches(wds_glob, tokenizer):
  config = wds_config(wds_glob)
  config.batch_size = 8
  batch = next(data.build_train(config, tokenizer))
  assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (8, 32) and batch["text"].dtype == np.int32


def test_wds_same_seed_same_batches(wds_glob, tokenizer):
  config = wds_config(wds_glob)
  config.batch_size = 4
  assert_same_batches(take(data.build_train(config, tokenizer), 4),
                      take(data.build_train(config, tokenizer), 4))


def test_wds_resumes_exactly_mid_shard_window_and_epoch(wds_glob, tokenizer):
  config = wds_config(wds_glob)
  config.batch_size = 4
  iterator = data.build_train(config, tokenizer)
  take(iterator, 7)  # 28 samples: into the second epoch, mid-shard, mid-window
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 4)
  resumed = data.build_train(config, tokenizer)
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 4))


def test_wds_worker_processes_resume_exactly(wds_glob, tokenizer):
  config = wds_config(wds_glob, num_workers=2)
  config.batch_size = 4
  assert_resumes_exactly(config, tokenizer, skip=3, check=3)


def test_wds_hosts_read_disjoint_shards_covering_the_data(wds_glob):
  config = wds_config(wds_glob)
  shards = wds.list_shards(wds_glob)
  host_keys = []
  for index in range(2):
    mine = wds.host_shards(shards, index, 2)
    one_epoch = sum(1 for shard in mine for _ in wds.read_samples(shard))
    stream = iter(sources.host_records(config, index, 2, seed=0))
    keys = [r["key"] for r in take(stream, one_epoch)]
    assert len(set(keys)) == one_epoch  # one epoch: every sample once
    host_keys.append(set(keys))
  assert not host_keys[0] & host_keys[1]
  assert host_keys[0] | host_keys[1] == {f"{i:09d}" for i in range(NUM_IMAGES)}


def test_shard_lists_from_globs_and_brace_ranges(wds_glob):
  folder = wds_glob[:-len("*.tar")]
  assert wds.list_shards(folder + "{00000..00004}.tar") == wds.list_shards(wds_glob)
  assert wds.list_shards("gs://b/{8..10}-{0..1}.tar") == [
      "gs://b/8-0.tar", "gs://b/8-1.tar", "gs://b/9-0.tar", "gs://b/9-1.tar",
      "gs://b/10-0.tar", "gs://b/10-1.tar"]
  assert wds.list_shards("gs://b/{098..100}.tar") == [
      "gs://b/098.tar", "gs://b/099.tar", "gs://b/100.tar"]
  with pytest.raises(FileNotFoundError):
    wds.list_shards(folder + "*.zip")


def _member(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def test_tar_member_without_its_pair_is_skipped(tmp_path):
  png = io.BytesIO()
  Image.new("RGB", (4, 4)).save(png, format="PNG")
  path = tmp_path / "mixed.tar"
  with tarfile.open(path, "w") as tar:
    for name in ["a.jpg", "a.txt", "b.png", "c.txt", "d.json", "d.png", "d.txt",
                 "sub/e.webp", "sub/e.txt", "f.png"]:
      _member(tar, name, b"caption" if name.endswith(".txt") else png.getvalue())
  assert [s["key"] for s in wds.read_samples(str(path))] == ["a", "d", "sub/e"]
  assert next(wds.read_samples(str(path)))["text"] == "caption"


def test_shards_without_any_pair_raise_instead_of_spinning(tmp_path):
  with tarfile.open(tmp_path / "orphans.tar", "w") as tar:
    _member(tar, "a.txt", b"no image")
  records = iter(wds.TarSampleDataset([str(tmp_path / "orphans.tar")], seed=0))
  assert next(records)["skipped"] == "missing_image"  # a tombstone, counted downstream
  with pytest.raises(ValueError, match="no complete image-text sample"):
    next(records)


# ---- TFDS ArrayRecord ----------------------------------------------------------------


class TinyDigits(DigitsTfds):
  """Digits in TFDS: 40 train, 20 test images."""

  SPLIT_SIZES = {"train": 40, "test": 20}


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  return TinyDigits.prepare(tmp_path_factory.mktemp("tfds"))


def tfds_config(data_dir, **overrides):
  return make_config(source="tfds", name="tiny_digits", data_dir=data_dir,
                     text_key="captions", **overrides)


def test_tfds_batches_and_resume(tfds_dir, tokenizer):
  config = tfds_config(tfds_dir)
  config.batch_size = 8
  iterator = data.build_train(config, tokenizer)
  first = next(iterator)
  assert first["image"].shape == (8, SIZE, SIZE, 3) and first["text"].shape == (8, 32)
  take(iterator, 5)  # 48 samples: into the second epoch of 40
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 3)
  resumed = data.build_train(config, tokenizer)
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 3))


def test_tfds_hosts_read_disjoint_slices(tfds_dir):
  config = tfds_config(tfds_dir)
  keys = [{r["key"] for r in sources.host_records(config, i, 2, seed=0)} for i in range(2)]
  assert not keys[0] & keys[1]
  assert keys[0] | keys[1] == {f"train-{i}" for i in range(40)}


def test_tfds_eval_classification(tfds_dir):
  config = make_config()
  labelled = datasets.labelled(config, dataset="tiny_digits", split="test",
                               data_dir=tfds_dir)
  images = labelled.images[np.arange(len(labelled.images))]
  assert images.shape == (20, SIZE, SIZE, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(np.sort(labelled.labels),  # TFDS stores examples shuffled
                                np.sort(digits.load_split("test")[1][:20]))
  assert labelled.class_names == digits.CLASS_NAMES


def test_pack_array_record_is_readable_by_the_tfds_source(image_folder, tmp_path,
                                                          tokenizer):
  folder, captions = image_folder
  pack.pack_array_record(str(folder), pack.read_captions(str(captions)), str(tmp_path),
                         10, "photo_captions")
  config = make_config(source="tfds", name="photo_captions", data_dir=str(tmp_path))
  records = sources.host_records(config, 0, 1, seed=0)
  assert len(records) == NUM_IMAGES
  assert {r["image"].shape[-1] for r in records} == {3}
  batch = next(data.build_train(config, tokenizer))
  assert batch["image"].shape == (16, SIZE, SIZE, 3)
