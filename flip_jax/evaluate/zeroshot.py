"""Zero-shot classification: class names x prompt templates -> averaged text embeddings."""
from __future__ import annotations

import numpy as np

from flip_jax import data
from flip_jax.data import tokenizer as tokenizer_lib
from flip_jax.evaluate.base import Evaluator, l2_normalize, register, topk_accuracy


def class_embeddings(features, tokenizer, class_names, templates) -> np.ndarray:
  """[C, D]: per class, the mean of its L2-normalised prompt embeddings, re-normalised."""
  prompts = [t.format(c) for c in class_names for t in templates]
  emb = l2_normalize(features.text(tokenizer.encode(prompts)))
  emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return l2_normalize(emb)


@register("zeroshot")
class ZeroShot(Evaluator):

  def __init__(self, name, cfg, config, workdir):
    super().__init__(name, cfg, config, workdir)
    self.images, self.labels, self.class_names, self.templates = (
        data.build_eval_classification(
            config, dataset=cfg.get("dataset", "digits"), split=cfg.get("split", "test"),
            data_dir=cfg.get("data_dir", ""), image_key=cfg.get("image_key", "image"),
            label_key=cfg.get("label_key", "label")))
    self.tokenizer = tokenizer_lib.get_tokenizer(config, workdir)

  def run(self, features):
    text = class_embeddings(features, self.tokenizer, self.class_names, self.templates)
    img = l2_normalize(features.image(self.images))
    logits = img @ text.T
    k5 = min(5, len(self.class_names))
    return {"top1": topk_accuracy(logits, self.labels, 1),
            f"top{k5}": topk_accuracy(logits, self.labels, k5)}
