"""Shared test helpers: tiny configs and batches."""
import importlib.util
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg=None):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def tiny_flip_config(**overrides):
  """flip_debug shrunk further: depth 2, width 32, vocab 64; float32."""
  c = load_config("flip_debug")
  c.model.image.update(width=32, depth=2, heads=2, mlp_dim=64)
  c.model.text.update(width=32, depth=2, heads=2, mlp_dim=64, vocab_size=64)
  c.model.embed_dim = 32
  c.text_len = 8
  c.batch_size = 16
  c.total_samples = 16 * 20
  c.dtype = "float32"
  c.optim.warmup_samples = 16 * 2
  c.evals = {}
  c.update_from_flattened_dict(overrides)
  return c


def random_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, s = config.batch_size, config.image_size
  tokens = rng.integers(1, config.model.text.vocab_size, (b, config.text_len)).astype(np.int32)
  tokens[:, -2:] = 0  # some padding
  return {"image": rng.normal(size=(b, s, s, 3)).astype(np.float32), "text": tokens}


def assert_grads_close(got, want):
  """Each gradient (pytrees alike) within 1e-6 of the other, relative to its largest entry
  where that exceeds 1 (the CLS token's gradient is ~10-30: float32 sums in another order
  cannot do better than ~1e-6 of that)."""
  from flip_jax import trees
  got, want = trees.flatten(got), trees.flatten(want)
  assert got.keys() == want.keys()
  for name, g in want.items():
    scale = max(1.0, float(np.abs(g).max()))
    np.testing.assert_allclose(got[name], g, rtol=0, atol=1e-6 * scale, err_msg=name)


def loss_and_grads(config, mesh):
  """FLIP's loss (fixed key and step) and its gradient at the trainer's initial params on
  `mesh`: (loss, grads, params) as numpy, and the compiled program's HLO text."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from flip_jax import train
  trainer = train.Trainer(config, mesh)
  with jax.set_mesh(mesh):
    state = trainer.init()
    batch = {k: jax.device_put(v, trainer.batch_shardings[k])
             for k, v in random_batch(config).items()}

    def loss(params):
      model = nnx.merge(trainer.graphdef, params, state["extra"])
      return trainer.objective.loss(model, batch, jax.random.key(7), jnp.int32(3))[0]

    compiled = jax.jit(jax.value_and_grad(loss)).lower(state["params"]).compile()
    value, grads = compiled(state["params"])
  return (*jax.device_get((value, grads, state["params"])), compiled.as_text())
