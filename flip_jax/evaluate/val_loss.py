"""Validation loss: the training objective, made deterministic, on a held-out split.

The objective's `validation_loss` fixes its masks (a fixed seed, or EVA's every other patch)
and turns drop-path off; the batches are the data format's evaluation view at the
training batch size. This is the proxy metric of the data-scaling study.
"""
from __future__ import annotations

from flip_jax import data
from flip_jax.data import pipeline
from flip_jax.evaluate import datasets
from flip_jax.evaluate.base import Evaluator, register


@register("val_loss")
class ValidationLoss(Evaluator):
  """dataset ('digits' or a TFDS name; feature keys from config.data), split, data_dir,
  batch_size (0 = the training batch)."""

  KEYS = dict(dataset="digits", split="test", data_dir="", batch_size=0)

  @classmethod
  def check(cls, name, opts):
    if not isinstance(opts["batch_size"], int) or opts["batch_size"] < 0:
      return [f"config.evals.{name}.batch_size: must be an int >= 0, got "
              f"{opts['batch_size']!r}"]
    return []

  def __init__(self, name, cfg, config, workdir):
    super().__init__(name, cfg, config, workdir)
    fmt = pipeline.FORMATS[config.data.format]
    tokenizer = data.get_tokenizer(config, workdir) if fmt.needs_tokenizer else None
    dataset, split = self.opts["dataset"], self.opts["split"]
    if dataset != "digits":
      datasets.tfds_builder(dataset, split, self.opts["data_dir"], f"config.evals.{name}")
    batch_size = self.opts["batch_size"] or config.batch_size
    self.batches = pipeline.build_eval_batches(
        config, tokenizer, dataset=dataset, split=split, data_dir=self.opts["data_dir"],
        batch_size=batch_size)
    if not self.batches:
      raise ValueError(f"config.evals.{name}.batch_size: {dataset!r} split {split!r} has "
                       f"fewer examples than one batch ({batch_size})")

  def run(self, features):
    return features.loss(self.batches)
