"""Image-text retrieval: image->text and text->image recall@k with several captions per
image, as open_clip's benchmark (CLIP_benchmark) counts it: a query succeeds at k when
any of its positives is among its k most similar candidates. Candidates are ordered by
cosine similarity, ties broken by index (the lower index ranks first), so the numbers
do not depend on how a sort treats equal scores.

Identical caption strings are one text (`merge_duplicates`, default on): it is positive
for every image that has it. Without merging, equal captions would tie and the index
alone would decide; digits repeats each caption for every image of a class, and COCO has
a few exact duplicates. With no duplicates both protocols agree.
"""
from __future__ import annotations

import numpy as np

from flip_jax.data import tokenizer as tokenizer_lib
from flip_jax.evaluate import datasets
from flip_jax.evaluate.base import Evaluator, register
from flip_jax.models.image_tower import l2_normalize

CHUNK = 1024  # query rows scored at once: bounds the similarity block held in memory


def first_positive_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """0-based rank of each row's best-ranked positive, in the row's order by descending
  score with ties broken by index. scores [Q, C] float, positives [Q, C] bool."""
  if not positives.any(axis=1).all():
    raise ValueError("every query needs at least one positive")
  best = np.argmax(np.where(positives, scores, -np.inf), axis=1)  # first of equal maxima
  value = scores[np.arange(len(scores)), best][:, None]
  before = np.arange(scores.shape[1])[None, :] < best[:, None]
  return ((scores > value) | ((scores == value) & before)).sum(axis=1)


def recall_at(ranks: np.ndarray, ks) -> dict[int, float]:
  return {k: float((ranks < k).mean()) for k in ks}


def retrieval_ranks(queries: np.ndarray, candidates: np.ndarray, positives: np.ndarray
                    ) -> np.ndarray:
  """first_positive_ranks of queries @ candidates.T, computed CHUNK rows at a time."""
  return np.concatenate([
      first_positive_ranks(queries[i:i + CHUNK] @ candidates.T, positives[i:i + CHUNK])
      for i in range(0, len(queries), CHUNK)])


def texts_and_positives(captions: list[tuple[str, ...]], merge_duplicates: bool
                        ) -> tuple[list[str], np.ndarray]:
  """The text candidates and the [num_images, num_texts] positive matrix."""
  texts, index, owners = [], {}, []
  for image, caps in enumerate(captions):
    for cap in caps:
      if merge_duplicates and cap in index:
        owners[index[cap]].append(image)
        continue
      index.setdefault(cap, len(texts))
      texts.append(cap)
      owners.append([image])
  positives = np.zeros((len(captions), len(texts)), bool)
  for t, images in enumerate(owners):
    positives[images, t] = True
  return texts, positives


def metrics(image_features, text_features, positives, ks=(1, 5, 10)) -> dict[str, float]:
  """{'i2t_r1', ..., 't2i_r10'} from features (L2-normalised here)."""
  img, txt = l2_normalize(image_features), l2_normalize(text_features)
  out = {}
  for direction, ranks in (("i2t", retrieval_ranks(img, txt, positives)),
                           ("t2i", retrieval_ranks(txt, img, positives.T))):
    out.update({f"{direction}_r{k}": v for k, v in recall_at(ranks, ks).items()})
  return out


@register("retrieval")
class Retrieval(Evaluator):
  """dataset: 'digits' or a TFDS captioned set (data_dir, split, image_key, text_key:
  one caption or a list per image; COCO: 'captions/text'); ks: recall cut-offs."""

  KEYS = dict(dataset="digits", split="test", data_dir="", image_key="image",
              text_key="captions", merge_duplicates=True, ks=(1, 5, 10))

  @classmethod
  def check(cls, name, opts):
    ks = opts["ks"]
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
      return [f"config.evals.{name}.ks: must be ints >= 1, got {ks!r}"]
    return []

  def __init__(self, name, cfg, config, workdir):
    super().__init__(name, cfg, config, workdir)
    o = self.opts
    self.data = datasets.captioned(
        config, dataset=o["dataset"], split=o["split"], data_dir=o["data_dir"],
        image_key=o["image_key"], text_key=o["text_key"], where=f"config.evals.{name}")
    self.texts, self.positives = texts_and_positives(self.data.captions,
                                                     bool(o["merge_duplicates"]))
    self.tokenizer = tokenizer_lib.get_tokenizer(config, workdir)

  def run(self, features):
    img = features.image(self.data.images)
    txt = features.text(self.tokenizer.encode(self.texts))
    return metrics(img, txt, self.positives, tuple(self.opts["ks"]))
