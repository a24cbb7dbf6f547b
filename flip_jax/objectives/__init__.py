"""Pre-training methods. Importing this package registers every objective."""
from flip_jax.objectives import eva  # noqa: F401  (registers 'eva')
from flip_jax.objectives import classify  # noqa: F401  (registers 'classify')
from flip_jax.objectives import extrema  # noqa: F401  (registers 'extrema')
from flip_jax.objectives import flip  # noqa: F401  (registers 'flip')
from flip_jax.objectives import simmim  # noqa: F401  (registers 'simmim')
from flip_jax.objectives.base import (  # noqa: F401
    REGISTRY, Objective, get, register, training_only_params)
