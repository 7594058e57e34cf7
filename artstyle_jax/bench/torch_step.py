"""The dual-teacher train step written in plain PyTorch, as the reference `bench step --torch` times.

artstyle_jax/METHOD.md's steps 1 to 7 as the published code runs them, eager, float32: EMA of each teacher
copy towards the student, student forward, teacher forwards without gradient, relation and Gram
losses, backward, `torch.optim.SGD` (momentum, weight decay), enqueue. The backbone is
transformers' `ConvNextModel` (features = `last_hidden_state`, the stage-4 map before its pooler
norm), the head Linear -> ReLU -> Linear -> L2 normalisation. As the published code it keeps one
parameter copy per teacher (two with a style teacher) and forms the (B, C, C) Gram matrices.

`TorchStep.params_for_jax()` gives the same weights in our parameter tree, so that a test can
check the two steps compute the same losses.
"""
import copy

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
import transformers

from artstyle_jax.method import optim
from artstyle_jax.models import convnext
from artstyle_jax.models import convnext_weights


class _Network(torch.nn.Module):
  """Backbone + projection head: NCHW images -> (f (B, C, h, w), z (B, D) unit rows)."""

  def __init__(self, depths, dims, drop_path_rate: float, hidden_dim: int, out_dim: int):
    super().__init__()
    self.backbone = transformers.ConvNextModel(transformers.ConvNextConfig(
        num_stages=len(depths), depths=list(depths), hidden_sizes=list(dims),
        drop_path_rate=drop_path_rate))
    self.linear = torch.nn.Linear(dims[-1], hidden_dim)
    self.out = torch.nn.Linear(hidden_dim, out_dim)

  def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = self.backbone(images).last_hidden_state
    z = self.out(F.relu(self.linear(f.mean(dim=(2, 3)))))
    return f, F.normalize(z, dim=1)


def _gram(f: torch.Tensor) -> torch.Tensor:
  """(B, C, h, w) -> (B, C, C), unnormalised."""
  f = f.flatten(2)
  return torch.bmm(f, f.transpose(1, 2))


def gram_alignment_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
  a = _gram((f_s + f_t) / 2)
  a = a - a.mean(dim=(1, 2), keepdim=True)
  cos_s = F.cosine_similarity(a.flatten(), _gram(f_s).flatten(), dim=0)
  cos_t = F.cosine_similarity(a.flatten(), _gram(f_t).flatten(), dim=0)
  return 0.5 * (1 - cos_s) + 0.5 * (1 - cos_t)


def relation_alignment_loss(z_s, z_t, queue, student_temp: float, teacher_temp: float):
  target = F.softmax(z_t @ queue.T / teacher_temp, dim=1)
  return -torch.sum(target * F.log_softmax(z_s @ queue.T / student_temp, dim=1), dim=1).mean()


def info_nce_loss(z_s, z_t, queue, temperature: float):
  logits = torch.cat([torch.sum(z_s * z_t, dim=1, keepdim=True), z_s @ queue.T], dim=1) / temperature
  return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


class TorchStep:
  """One training step of `config` in PyTorch; call it with a batch of NCHW float32 views."""

  def __init__(self, config: ml_collections.ConfigDict, seed: int = 0, depths=None, dims=None):
    """The networks are `config.model.name`'s size, or `depths` and `dims` when given."""
    if config.model.dtype != "float32":
      raise ValueError(f"the PyTorch reference step runs float32 only, not {config.model.dtype}")
    torch.manual_seed(seed)
    if depths is None or dims is None:
      depths, dims = convnext.SIZES[config.model.name]
    self.config = config
    self.student = _Network(depths, dims, config.model.drop_path_rate, config.model.proj_hidden_dim,
                            config.model.proj_dim)
    self.views = ("weak", "style") if config.style_teacher else ("weak",)
    momenta = {"weak": config.momentum_weak, "style": config.momentum_style}
    self.teachers = {view: (copy.deepcopy(self.student), momenta[view]) for view in self.views}
    for teacher, _ in self.teachers.values():
      teacher.requires_grad_(False)
    self.queue = F.normalize(torch.randn(config.queue_size, config.model.proj_dim), dim=1)
    self.queue_ptr = 0
    self.optimizer = torch.optim.SGD(
        self.student.parameters(), lr=optim.base_learning_rate(config.optim, config.batch_size),
        momentum=config.optim.momentum, weight_decay=config.optim.weight_decay)
    self.student.train()
    for teacher, _ in self.teachers.values():
      teacher.eval()  # As ours: no drop-path in the teachers (ConvNeXt has no other stochastic layer).

  def _relation(self, z_s, z_t):
    loss = self.config.loss
    if loss.relation == "info_nce":
      return info_nce_loss(z_s, z_t, self.queue, loss.info_nce_temp)
    return relation_alignment_loss(z_s, z_t, self.queue, loss.student_temp, loss.teacher_temp)

  @torch.no_grad()
  def _ema(self) -> None:
    student = list(self.student.parameters())
    for teacher, momentum in self.teachers.values():
      weights = list(teacher.parameters())
      torch._foreach_mul_(weights, momentum)
      torch._foreach_add_(weights, student, alpha=1 - momentum)

  def loss_terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted loss, {term: value}) of the current networks on `batch`, without EMA or update."""
    with torch.no_grad():
      targets = {view: self.teachers[view][0](batch[view]) for view in self.views}
    f_s, z_s = self.student(batch["student"])
    terms = {}
    for view, (f_t, z_t) in targets.items():
      terms[f"rel_{view}"] = self._relation(z_s, z_t)
      terms[f"gram_{view}"] = gram_alignment_loss(f_s, f_t)
    weights = self.config.loss_weights
    loss = sum(weights[term] * value for term, value in terms.items() if weights[term])
    self._keys = [targets[view][1] for view in self.views]
    return loss, terms

  def __call__(self, batch: dict[str, torch.Tensor]) -> float:
    """EMA, forwards, losses, backward, SGD, enqueue; returns the loss."""
    self._ema()
    loss, _ = self.loss_terms(batch)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    for keys in self._keys:
      self.queue[self.queue_ptr:self.queue_ptr + len(keys)] = keys
      self.queue_ptr = (self.queue_ptr + len(keys)) % len(self.queue)
    return float(loss.detach())

  def params_for_jax(self) -> dict:
    """The student's weights as our {'backbone': ..., 'head': ...} parameter tree (numpy)."""
    state = {k: v.detach().numpy() for k, v in self.student.backbone.state_dict().items()}
    _, backbone = convnext_weights.from_hf(state)
    head = {name: {"kernel": layer.weight.detach().numpy().T, "bias": layer.bias.detach().numpy()}
            for name, layer in (("linear", self.student.linear), ("out", self.student.out))}
    return {"backbone": backbone, "head": head}

  def queue_for_jax(self) -> np.ndarray:
    return self.queue.numpy().copy()
