"""Weights in and out of flip_jax: Hugging Face CLIP, open_clip, and our exported Orbax dirs.

Each foreign format is a list of `rules.Rule`s (one per foreign tensor: which of our
params it holds, and how its layout differs) plus a config translation that refuses,
naming the option, any architecture the format cannot express exactly.
"""
