"""Helpers shared by the data and evaluation tests: a small CPU config, batch comparisons,
and digits written as a TFDS (ArrayRecord) dataset."""
import json

import numpy as np
import tensorflow_datasets as tfds

from flip_jax import config_base, data
from flip_jax.data import digits

SIZE = 16


def make_config(**data_overrides):
  """Digits-sized defaults: 16 px images, global batch 16, the digits WordPiece vocab."""
  config = config_base.base_config()
  config.tokenizer = "wordpiece:digits"
  config.image_size = SIZE
  config.batch_size = 16
  config.data.update(data_overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_resumes_exactly(config, tokenizer, *, skip: int, check: int):
  """A train iterator restored from its state after `skip` batches (state through JSON, as
  Orbax's grain handler writes it) yields the same next `check` batches as the original."""
  iterator = data.build_train(config, tokenizer)
  take(iterator, skip)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, check)
  iterator.close()
  resumed = data.build_train(config, tokenizer)
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, check))
  resumed.close()


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["text"], y["text"])


class DigitsTfds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Digits as a TFDS dataset: image, a list of captions and a ClassLabel with names.

  A test module subclasses it with its own name (the TFDS dataset name) and SPLIT_SIZES.
  """

  VERSION = tfds.core.Version("1.0.0")
  SPLIT_SIZES = {"train": 40, "test": 40}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "label": tfds.features.ClassLabel(names=digits.CLASS_NAMES),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, count)
            for split, count in self.SPLIT_SIZES.items()}

  def _generate_examples(self, split, count):
    images, labels = digits.load_split(split)
    for i in range(count):
      yield i, {"image": images[i], "captions": list(digits.captions(int(labels[i]))),
                "label": int(labels[i])}

  @classmethod
  def prepare(cls, data_dir) -> str:
    """Writes the dataset under `data_dir` as ArrayRecord; returns the data_dir."""
    cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)
