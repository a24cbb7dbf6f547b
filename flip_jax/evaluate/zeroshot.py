"""Zero-shot classification: class names x prompt templates -> averaged text embeddings;
each image is assigned the class whose embedding is most similar (top-1 / top-5)."""
from __future__ import annotations

import numpy as np

from flip_jax.data import tokenizer as tokenizer_lib
from flip_jax.evaluate import datasets
from flip_jax.evaluate import templates as templates_lib
from flip_jax.evaluate.base import Evaluator, register, topk_metrics
from flip_jax.models.image_tower import l2_normalize


def class_embeddings(features, tokenizer, class_names, templates) -> np.ndarray:
  """[C, D]: per class, the mean of its L2-normalised prompt embeddings, re-normalised."""
  prompts = [t.replace("{}", c) for c in class_names for t in templates]
  emb = l2_normalize(features.text(tokenizer.encode(prompts)))
  emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return l2_normalize(emb)


def classify(image_features: np.ndarray, class_features: np.ndarray, labels: np.ndarray
             ) -> dict[str, float]:
  """Top-1/top-5 of cosine similarity between images and (L2-normalised) class embeddings."""
  logits = l2_normalize(image_features) @ class_features.T
  return topk_metrics(logits, labels)


@register("zeroshot")
class ZeroShot(Evaluator):
  """dataset: 'digits' or a TFDS name (data_dir, split, image_key, label_key);
  templates: 'clip80' | 'clip_short' | 'digits' | a file ('' = 'digits' for digits, else
  'clip80'); class_names_file: one name a line (default: the dataset's ClassLabel names).
  """

  KEYS = dict(dataset="digits", split="test", data_dir="", image_key="image",
              label_key="label", templates="", class_names_file="")

  @classmethod
  def check(cls, name, opts):
    spec = opts["templates"] or templates_lib.default_for(opts["dataset"])
    return templates_lib.check(spec, f"config.evals.{name}.templates")

  def __init__(self, name, cfg, config, workdir):
    super().__init__(name, cfg, config, workdir)
    o, where = self.opts, f"config.evals.{name}"
    self.templates = templates_lib.load(
        o["templates"] or templates_lib.default_for(o["dataset"]), self.key("templates"))
    self.data = datasets.labelled(
        config, dataset=o["dataset"], split=o["split"], data_dir=o["data_dir"],
        image_key=o["image_key"], label_key=o["label_key"], where=where)
    self.class_names = datasets.class_names(self.data, o["class_names_file"], where)
    self.tokenizer = tokenizer_lib.get_tokenizer(config, workdir)

  def run(self, features):
    text = class_embeddings(features, self.tokenizer, self.class_names, self.templates)
    return classify(features.image(self.data.images), text, self.data.labels)
