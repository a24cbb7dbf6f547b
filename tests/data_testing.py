"""Helpers shared by the flip_jax.data tests: a small CPU config and batch comparisons."""
import numpy as np

from flip_jax import config_base

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


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["text"], y["text"])
