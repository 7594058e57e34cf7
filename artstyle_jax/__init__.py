"""artstyle-jax: self-supervised dual-teacher knowledge distillation for art style, in JAX."""

__version__ = "0.1.0"
