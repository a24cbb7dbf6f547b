"""k-nearest-neighbour classification on frozen image features (InstDisc / DINO protocol):
cosine similarity to every training image, the k most similar vote for their class with
weight exp(similarity / temperature), the class with the largest total wins.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flip_jax.evaluate import datasets
from flip_jax.evaluate.base import (Evaluator, on_host_device, register,
                                   topk_metrics)
from flip_jax.models.image_tower import l2_normalize

CHUNK = 256  # test rows scored against the whole training set at once


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _votes(test, train, train_labels, *, k, num_classes, temperature):
  sims = jnp.matmul(test, train.T, precision=jax.lax.Precision.HIGHEST)
  sims, index = jax.lax.top_k(sims, k)  # equal similarities: lower index first
  weights = jnp.exp(sims / temperature)
  onehot = jax.nn.one_hot(train_labels[index], num_classes, dtype=weights.dtype)
  return jnp.einsum("qk,qkc->qc", weights, onehot)


def knn_scores(test_features, train_features, train_labels, num_classes: int, *,
               k: int = 20, temperature: float = 0.07) -> np.ndarray:
  """[num_test, num_classes] summed vote weights (features are L2-normalised here)."""
  test, train = l2_normalize(test_features), l2_normalize(train_features)
  k = min(k, len(train))
  with on_host_device() as put:
    train, labels = put(train), put(train_labels.astype(np.int32))
    return np.concatenate([
        np.asarray(_votes(put(test[i:i + CHUNK]), train, labels, k=k,
                          num_classes=num_classes, temperature=temperature))
        for i in range(0, len(test), CHUNK)])


@register("knn")
class KNN(Evaluator):
  """dataset: 'digits' or a TFDS classification set (data_dir, image_key, label_key);
  neighbours come from train_split, accuracy is measured on test_split. features: which
  image representation ('' = the objective's default; others by name, e.g. ExtreMA's
  'student' or 'teacher_prenorm')."""

  KEYS = dict(dataset="digits", train_split="train", test_split="test", data_dir="",
              image_key="image", label_key="label", k=20, temperature=0.07, features="")

  @classmethod
  def check(cls, name, opts):
    errors = []
    if not isinstance(opts["k"], int) or opts["k"] < 1:
      errors.append(f"config.evals.{name}.k: must be an int >= 1, got {opts['k']!r}")
    if not opts["temperature"] > 0:
      errors.append(f"config.evals.{name}.temperature: must be > 0, got "
                    f"{opts['temperature']!r}")
    return errors

  def __init__(self, name, cfg, config, workdir):
    super().__init__(name, cfg, config, workdir)
    self.train, self.test = labelled_pair(self, config)

  def run(self, features):
    train_x = features.image(self.train.images, self.opts["features"])
    test_x = features.image(self.test.images, self.opts["features"])
    scores = knn_scores(test_x, train_x, self.train.labels, num_classes(self.train, self.test),
                        k=self.opts["k"], temperature=float(self.opts["temperature"]))
    return topk_metrics(scores, self.test.labels)


def labelled_pair(ev: Evaluator, config) -> tuple[datasets.Labelled, datasets.Labelled]:
  """The train and test splits an evaluator's keys name (shared with the linear probe)."""
  o = ev.opts

  def load(split_key):
    return datasets.labelled(config, dataset=o["dataset"], split=o[split_key],
                             data_dir=o["data_dir"], image_key=o["image_key"],
                             label_key=o["label_key"], where=f"config.evals.{ev.name}",
                             split_key=split_key)

  return load("train_split"), load("test_split")


def num_classes(*sets: datasets.Labelled) -> int:
  """From the metadata when the dataset has class names, else the largest label + 1."""
  if sets[0].class_names is not None:
    return len(sets[0].class_names)
  return int(max(s.labels.max() for s in sets)) + 1
