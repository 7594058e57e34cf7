"""Linear probes on frozen features: a fast on-device fit, and the paper's SGD protocol.

Both produce the same head, {'kernel': (C, K) float32, 'bias': (K,) float32}, applied to raw
pooled features by `heads.linear_logits` (logits = features @ kernel + bias), so predict and eval need
not know which mode trained it.

Fast mode (`fit_fast`): features are extracted once (optionally for a few augmented copies of
the training set) and the probe is trained on device in one jitted `lax.scan`:
  - features are standardised per channel with the training mean and standard deviation (as
    MAE's linear probe does with an affine-free BatchNorm); the standardisation is folded into
    the returned kernel and bias, so the head needs no separate statistics;
  - objective: mean softmax cross-entropy + weight_decay / 2 * ||kernel||^2 (bias not decayed),
    a convex problem, started from zeros;
  - optimiser: Adam, 300 steps, learning rate 0.01 cosine-annealed to 0, full batch by default
    (one step sees every example) or random minibatches of `batch_size` rows.

Paper mode (`fit_paper`): artstyle_jax/METHOD.md's "Linear evaluation": Linear(C -> K) with weights
N(0, 0.01) and bias 0, SGD with Nesterov momentum 0.9 (torch semantics, which optax's
`sgd(nesterov=True)` shares), lr 0.001 cosine-annealed per iteration to 0 over all epochs,
weight decay 0, 100 epochs, batch 16 (set by the caller's batches), fresh augmented views each
epoch. It returns the head after the final epoch: the accuracy to report is that head's on the
test split, not the best over epochs.
"""
import functools
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from artstyle_jax.models import heads

FAST_STEPS = 300
FAST_LEARNING_RATE = 0.01
FAST_WEIGHT_DECAY = 1e-3
WEIGHT_DECAY_CANDIDATES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
STANDARDIZE_EPSILON = 1e-6  # added to each channel's variance

PAPER_EPOCHS = 100
PAPER_LEARNING_RATE = 0.001
PAPER_MOMENTUM = 0.9
PAPER_INIT_STDDEV = 0.01


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of (B, K) logits against (B,) int labels."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _flatten_copies(features: jax.Array, labels: np.ndarray) -> tuple[jax.Array, np.ndarray]:
  """(copies, N, C) with (N,) or (copies * N,) labels, or (N, C) with (N,) -> rows and labels."""
  if features.ndim == 3:
    copies, n, channels = features.shape
    if labels.shape == (n,):
      labels = np.tile(labels, copies)
    features = features.reshape(copies * n, channels)
  if features.ndim != 2:
    raise ValueError(f"features must be (N, C) or (copies, N, C); got shape {features.shape}.")
  if labels.shape != (features.shape[0],):
    raise ValueError(f"labels must be (N,) for features of shape {features.shape}; got shape {labels.shape}.")
  return features, labels


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}].")


def _check_fast_options(num_rows: int, steps: int, batch_size: Optional[int]) -> Optional[int]:
  if num_rows == 0:
    raise ValueError("there are no training features.")
  if steps < 1:
    raise ValueError(f"steps must be >= 1; got {steps}.")
  if batch_size is not None and not 1 <= batch_size <= num_rows:
    raise ValueError(f"batch_size must lie in [1, {num_rows}] or be None; got {batch_size}.")
  return None if batch_size == num_rows else batch_size


def _standardizer(features: jax.Array, standardize: bool) -> tuple[jax.Array, jax.Array]:
  """Per-channel (mean, 1 / std) of (N, C) float32 features; (0, 1) when not standardising."""
  if not standardize:
    channels = features.shape[1]
    return jnp.zeros((channels,), jnp.float32), jnp.ones((channels,), jnp.float32)
  return jnp.mean(features, axis=0), jax.lax.rsqrt(jnp.var(features, axis=0) + STANDARDIZE_EPSILON)


def _train_adam(inputs, labels, rng, learning_rate, weight_decay, *, num_classes: int, steps: int,
                batch_size: Optional[int]) -> tuple[heads.LinearHead, jax.Array]:
  """The fast-mode optimisation on (N, C) standardised inputs: (params, (steps,) objective)."""
  num_examples, channels = inputs.shape

  def objective(params, x, y):
    logits = x @ params["kernel"] + params["bias"]
    return cross_entropy(logits, y) + 0.5 * weight_decay * jnp.sum(jnp.square(params["kernel"]))

  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  params = {"kernel": jnp.zeros((channels, num_classes), jnp.float32),
            "bias": jnp.zeros((num_classes,), jnp.float32)}

  def step(carry, step_rng):
    params, opt_state = carry
    if batch_size is None:
      x, y = inputs, labels
    else:
      rows = jax.random.choice(step_rng, num_examples, (batch_size,), replace=False)
      x, y = inputs[rows], labels[rows]
    loss, grads = jax.value_and_grad(objective)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(rng, steps))
  return params, losses


class FastProbeResult(NamedTuple):
  head: heads.LinearHead
  losses: jax.Array  # (steps,) float32 objective (cross-entropy + weight decay term) per step.


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size", "standardize"))
def _fit_fast(features, labels, rng, learning_rate, weight_decay, *, num_classes: int, steps: int,
              batch_size: Optional[int], standardize: bool) -> FastProbeResult:
  features = features.astype(jnp.float32)
  mean, inv_std = _standardizer(features, standardize)
  params, losses = _train_adam((features - mean) * inv_std, labels, rng, learning_rate, weight_decay,
                               num_classes=num_classes, steps=steps, batch_size=batch_size)
  # Folding trades (x - mean) for a bias correction that cancels a large part of x @ kernel;
  # full float32 matmuls here and in heads.linear_logits keep that exact on TPU (default: bf16 passes).
  head = {"kernel": params["kernel"] * inv_std[:, None],
          "bias": params["bias"] - jnp.matmul(mean * inv_std, params["kernel"], precision=jax.lax.Precision.HIGHEST)}
  return FastProbeResult(head=head, losses=losses)


def fit_fast(features, labels, num_classes: int, *, steps: int = FAST_STEPS,
             learning_rate: float = FAST_LEARNING_RATE, weight_decay: float = FAST_WEIGHT_DECAY,
             batch_size: Optional[int] = None, standardize: bool = True,
             rng: Optional[jax.Array] = None) -> FastProbeResult:
  """Trains a linear probe on precomputed features, on device, in one jitted scan.

  Args:
    features: (N, C) features, or (copies, N, C) for several augmented copies of the same N
      images (all copies are training rows). Any float dtype; trained in float32.
    labels: (N,) int classes in [0, num_classes); also accepted: (copies * N,) for 3-D features.
    num_classes: K.
    steps: optimiser steps.
    learning_rate: Adam's peak learning rate, cosine-annealed to 0 over `steps`.
    weight_decay: coefficient of the L2 penalty weight_decay / 2 * ||kernel||^2 (in the
      standardised feature space), added to the mean cross-entropy; `select_weight_decay`
      picks one on a held-out part of the training set.
    batch_size: None for full-batch steps; else rows sampled without replacement per step.
    standardize: standardise each channel with the training mean and std (folded into the head).
    rng: key for minibatch sampling; unused at full batch (the fit is then deterministic).

  Returns:
    FastProbeResult(head {'kernel': (C, K), 'bias': (K,)} for raw features, losses (steps,)).
  """
  features, labels = _flatten_copies(jnp.asarray(features), np.asarray(labels))
  _check_labels(labels, num_classes)
  batch_size = _check_fast_options(features.shape[0], steps, batch_size)
  if rng is None:
    rng = jax.random.key(0)
  return _fit_fast(features, jnp.asarray(labels, jnp.int32), rng, jnp.float32(learning_rate),
                   jnp.float32(weight_decay), num_classes=num_classes, steps=steps, batch_size=batch_size,
                   standardize=standardize)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size", "standardize"))
def _validation_accuracies(train_features, train_labels, val_features, val_labels, rng, learning_rate,
                           weight_decays, *, num_classes: int, steps: int, batch_size: Optional[int],
                           standardize: bool) -> jax.Array:
  train_features = train_features.astype(jnp.float32)
  mean, inv_std = _standardizer(train_features, standardize)
  train_one = functools.partial(_train_adam, (train_features - mean) * inv_std, train_labels, rng,
                                learning_rate, num_classes=num_classes, steps=steps, batch_size=batch_size)
  params, _ = jax.vmap(lambda weight_decay: train_one(weight_decay=weight_decay))(weight_decays)
  val_inputs = (val_features.astype(jnp.float32) - mean) * inv_std
  logits = jnp.einsum("nc,wck->wnk", val_inputs, params["kernel"]) + params["bias"][:, None, :]
  return jnp.mean(jnp.argmax(logits, axis=-1) == val_labels, axis=-1)


class WeightDecaySelection(NamedTuple):
  weight_decay: float  # the chosen candidate
  accuracies: dict[float, float]  # held-out top-1 accuracy of every candidate


def select_weight_decay(features, labels, num_classes: int, *,
                        candidates: Sequence[float] = WEIGHT_DECAY_CANDIDATES,
                        validation_fraction: float = 0.2, steps: int = FAST_STEPS,
                        learning_rate: float = FAST_LEARNING_RATE, batch_size: Optional[int] = None,
                        standardize: bool = True, rng: Optional[jax.Array] = None) -> WeightDecaySelection:
  """Chooses `fit_fast`'s weight decay by held-out accuracy, all candidates trained at once (vmap).

  A random `validation_fraction` of the N images is held out (with all its augmented copies
  when features are (copies, N, C), so no image is on both sides); each candidate is fitted
  on the rest with `fit_fast`'s procedure and scored by top-1 accuracy on the held-out
  images. Ties go to the largest weight decay, the most regularised fit. Refit on the whole
  training set with the choice afterwards.

  Args:
    features, labels, num_classes, steps, learning_rate, batch_size, standardize: as `fit_fast`.
    candidates: weight decays to compare.
    validation_fraction: share of the images held out, in (0, 1).
    rng: key of the split (and of minibatch sampling).

  Returns:
    WeightDecaySelection(weight_decay, accuracies {candidate: held-out accuracy}).
  """
  features = jnp.asarray(features)
  labels = np.asarray(labels)
  if not candidates:
    raise ValueError("there are no weight decay candidates.")
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must lie in (0, 1); got {validation_fraction}.")
  rows, row_labels = _flatten_copies(features, labels)
  _check_labels(row_labels, num_classes)
  copies = features.shape[0] if features.ndim == 3 else 1
  num_images = rows.shape[0] // copies
  labels = row_labels[:num_images]
  if np.any(row_labels.reshape(copies, num_images) != labels):
    raise ValueError("the augmented copies of an image must all have the image's label.")
  num_val = int(round(validation_fraction * num_images))
  if not 1 <= num_val < num_images:
    raise ValueError(f"holding out {validation_fraction} of {num_images} images leaves no training or "
                     "no validation images.")
  if rng is None:
    rng = jax.random.key(0)
  split_rng, train_rng = jax.random.split(rng)
  order = np.asarray(jax.random.permutation(split_rng, num_images))
  val_images, train_images = order[:num_val], order[num_val:]
  image_offsets = num_images * np.arange(copies)[:, None]
  train_rows = (image_offsets + train_images).reshape(-1)
  val_rows = (image_offsets + val_images).reshape(-1)
  batch_size = _check_fast_options(len(train_rows), steps, batch_size)
  candidates = sorted(float(c) for c in candidates)
  accuracies = _validation_accuracies(
      rows[train_rows], jnp.asarray(row_labels[train_rows], jnp.int32),
      rows[val_rows], jnp.asarray(row_labels[val_rows], jnp.int32), train_rng,
      jnp.float32(learning_rate), jnp.asarray(candidates, jnp.float32), num_classes=num_classes, steps=steps,
      batch_size=batch_size, standardize=standardize)
  accuracies = [float(a) for a in np.asarray(accuracies)]
  best = max(range(len(candidates)), key=lambda i: (accuracies[i], candidates[i]))
  return WeightDecaySelection(weight_decay=candidates[best], accuracies=dict(zip(candidates, accuracies)))


def init_paper_head(rng: jax.Array, num_features: int, num_classes: int,
                    stddev: float = PAPER_INIT_STDDEV) -> heads.LinearHead:
  """Linear(C -> K) as the published linear evaluation initialises it: N(0, stddev) weights
  (0.01), zero bias."""
  return {"kernel": stddev * jax.random.normal(rng, (num_features, num_classes), jnp.float32),
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def paper_learning_rate(base_learning_rate: float, total_steps: int) -> optax.Schedule:
  """Cosine annealing per iteration to 0 (torch CosineAnnealingLR, T_max = total_steps):
  lr(t) = base * (1 + cos(pi * t / total_steps)) / 2, t = 0 for the first update."""
  return optax.cosine_decay_schedule(base_learning_rate, total_steps)


def paper_optimizer(base_learning_rate: float, total_steps: int, momentum: float = PAPER_MOMENTUM,
                    weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with Nesterov momentum on the cosine schedule above; weight decay (0 in the paper) added
  to the gradient before the momentum, as torch.optim.SGD does."""
  sgd = optax.sgd(paper_learning_rate(base_learning_rate, total_steps), momentum=momentum, nesterov=True)
  return optax.chain(optax.add_decayed_weights(weight_decay), sgd) if weight_decay else sgd


class PaperProbeResult(NamedTuple):
  head: heads.LinearHead  # after the final epoch
  epoch_losses: np.ndarray  # (epochs,) float64 mean training cross-entropy per epoch


def fit_paper(feature_fn: Callable[..., jax.Array],
              make_train_batches: Callable[[int], Iterable[tuple]],
              num_classes: int, steps_per_epoch: int, rng: jax.Array, *,
              epochs: int = PAPER_EPOCHS, learning_rate: float = PAPER_LEARNING_RATE,
              momentum: float = PAPER_MOMENTUM, weight_decay: float = 0.0,
              init_stddev: float = PAPER_INIT_STDDEV,
              on_epoch_end: Optional[Callable[[int, heads.LinearHead, float], None]] = None) -> PaperProbeResult:
  """Trains a linear probe with the published protocol, on fresh augmented views every epoch.

  Args:
    feature_fn: images -> (B, C) pooled features of the frozen backbone (jitted by the caller).
    make_train_batches: epoch -> iterable of (images, labels), labels (B,) int (NumPy, checked
      against num_classes, or a jax.Array laid out like the features); called once per epoch
      (0, 1, ...), each time with freshly augmented views. The paper's batch is 16.
    num_classes: K.
    steps_per_epoch: the number of batches every epoch yields; it fixes the cosine schedule's
      length, epochs * steps_per_epoch iterations, and a mismatch is an error.
    rng: key of the head's initialisation (`init_paper_head`).
    epochs: 100 in the paper.
    learning_rate: base learning rate, 0.001 in the paper.
    momentum: Nesterov momentum, 0.9 in the paper.
    weight_decay: L2 coefficient added to the gradient, 0 in the paper.
    init_stddev: standard deviation of the initial weights, 0.01 in the paper.
    on_epoch_end: called as on_epoch_end(epoch, head, mean_loss) after every epoch (e.g. to
      log test accuracy; the reported figure is still the final head's).

  Returns:
    PaperProbeResult(head after the final epoch, epoch_losses (epochs,)).
  """
  if steps_per_epoch < 1 or epochs < 1:
    raise ValueError(f"steps_per_epoch and epochs must be >= 1; got {steps_per_epoch} and {epochs}.")
  tx = paper_optimizer(learning_rate, epochs * steps_per_epoch, momentum, weight_decay)

  @jax.jit
  def train_step(head, opt_state, features, labels):
    loss, grads = jax.value_and_grad(lambda h: cross_entropy(heads.linear_logits(h, features), labels))(head)
    updates, opt_state = tx.update(grads, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss

  head = opt_state = None
  epoch_losses = []
  for epoch in range(epochs):
    loss_sum = jnp.zeros((), jnp.float32)
    num_batches = 0
    for images, labels in make_train_batches(epoch):
      if num_batches == steps_per_epoch:
        raise ValueError(f"epoch {epoch} yields more than steps_per_epoch = {steps_per_epoch} batches.")
      if not isinstance(labels, jax.Array):  # a global jax.Array may span hosts: no host copy
        labels = np.asarray(labels)
        _check_labels(labels, num_classes)
      features = feature_fn(images)
      if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"feature_fn must return ({labels.shape[0]}, C) features; got shape {features.shape}.")
      if head is None:
        head = init_paper_head(rng, features.shape[1], num_classes, init_stddev)
        opt_state = tx.init(head)
      head, opt_state, loss = train_step(head, opt_state, features, jnp.asarray(labels, jnp.int32))
      loss_sum = loss_sum + loss
      num_batches += 1
    if num_batches != steps_per_epoch:
      raise ValueError(f"epoch {epoch} yielded {num_batches} batches, but steps_per_epoch = {steps_per_epoch}.")
    epoch_losses.append(float(loss_sum) / num_batches)
    if on_epoch_end is not None:
      on_epoch_end(epoch, head, epoch_losses[-1])
  return PaperProbeResult(head=head, epoch_losses=np.asarray(epoch_losses))
