"""PyTorch weights for every converter: reading what `torch.save` wrote, the layout changes both
ways, and filling a module's whole parameter tree or refusing with one error type.

torch is imported only here and only when a file is read: reading PyTorch checkpoints needs it,
nothing else in artstyle_jax does, so it is no dependency of the package.

A converter maps each torch key to a path in our tree (a tuple of names) and a function of the
NumPy array. PyTorch layouts: Conv2d (out, in/groups, kh, kw) -> flax HWIO; Linear (out, in) ->
(in, out). A layout is a table of `Rule`s, each naming a torch module, its path in our tree and
each leaf's conversion both ways: `match_rules` reads a key through them, `to_state_dict`
writes a parameter tree back as the layout's state dict.
"""
from collections.abc import Callable, Iterable, Mapping, Sequence
import re
from typing import Any, NamedTuple

from etils import epath
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]
Convert = Callable[[np.ndarray], np.ndarray]


class CheckpointError(ValueError):
  """A weights file that is not of a known layout, or whose tensors do not fit the model."""


def describe(keys: Iterable[str], limit: int | None = 6, separator: str = ", ") -> str:
  """The sorted keys, the first `limit` of them (all for None) written out: 'a, b, ... (N in all)'."""
  keys = sorted(keys)
  if limit is None or len(keys) <= limit:
    return separator.join(keys)
  return f"{separator.join(keys[:limit])}, ... ({len(keys)} in all)"


def torch_module():
  """The torch module, or CheckpointError saying how to install it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError("reading PyTorch checkpoints needs torch (the CPU build is enough): "
                          "pip install torch") from e
  return torch


def load(path: str) -> Any:
  """What torch.save wrote to `path` (a local path or gs:// URL), tensors on the CPU; only
  tensors and plain Python values are unpickled (weights_only=True).

  Raises:
    FileNotFoundError: no such file.
    CheckpointError: torch is missing, or cannot read the file.
  """
  torch = torch_module()
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"no such checkpoint file: {path}")
  try:
    with epath.Path(path).open("rb") as f:
      return torch.load(f, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{path}: torch.load(weights_only=True) cannot read it ({first}); if it pickles "
                          "Python objects besides tensors and you trust it, re-save its state_dict alone "
                          "with torch.save") from e


def float32(value: Any) -> np.ndarray:
  """A torch tensor (any device or dtype) or an array-like as a float32 NumPy array."""
  if hasattr(value, "detach"):
    value = value.detach().to("cpu").float().numpy()
  return np.asarray(value, np.float32)


def as_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A state dict of torch tensors or arrays as NumPy arrays (tensors as float32)."""
  return {key: float32(value) if hasattr(value, "detach") else np.asarray(value)
          for key, value in state_dict.items()}


def tensors_of(loaded: Any, path: str) -> dict[str, np.ndarray]:
  """The flat name -> float32 array mapping of what `load` read: a state dict, or a dict whose
  'state_dict' is one (as MoCo and MMSelfSup save).

  Raises:
    CheckpointError: not a state dict, or one without tensors.
  """
  if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
    loaded = loaded["state_dict"]
  if not isinstance(loaded, Mapping):
    raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
  arrays = {str(key): float32(value) for key, value in loaded.items() if hasattr(value, "detach")}
  if not arrays:
    raise CheckpointError(f"{path} holds no tensors; its keys: {describe(str(k) for k in loaded) or 'none'}")
  return arrays


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (out, in/groups, kh, kw) -> flax HWIO (kh, kw, in/groups, out)."""
  return np.transpose(w, (2, 3, 1, 0))


def same(w: np.ndarray) -> np.ndarray:
  return w


def expected_shapes(module: nn.Module, image_size: int) -> dict[Path, tuple[int, ...]]:
  """Path -> shape of every parameter of `module`, from an abstract init on one RGB image."""
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), image)["params"]
  return {tuple(p.key for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}


def fill_params(description: str, expected: Mapping[Path, tuple[int, ...]], state_dict: Mapping[str, np.ndarray],
                match: Callable[[str], tuple[Path, Convert] | None]) -> dict:
  """The whole parameter tree, each leaf float32, from a state dict; `match(key)` gives a key's
  (path, conversion), or None for a key the model does not have.

  Raises:
    CheckpointError: naming every unexpected, missing and wrongly shaped key; nothing partial.
  """
  filled: dict[Path, np.ndarray] = {}
  unknown, wrong_shape = [], []
  for key, value in state_dict.items():
    found = match(key)
    if found is None or found[0] not in expected:
      unknown.append(key)
      continue
    path, convert = found
    leaf = np.asarray(convert(np.asarray(value)))
    if tuple(leaf.shape) != expected[path]:
      wrong_shape.append(f"{key}: {tuple(np.shape(value))} gives {tuple(leaf.shape)} for "
                         f"{'/'.join(path)}, which needs {expected[path]}")
      continue
    filled[path] = leaf.astype(np.float32)
  missing = ["/".join(path) for path in expected if path not in filled]
  if unknown or missing or wrong_shape:
    problems = [f"{what} ({len(keys)}): {describe(keys, limit=None, separator=separator)}"
                for what, keys, separator in (("unexpected keys", unknown, ", "), ("missing parameters", missing, ", "),
                                              ("wrongly shaped", wrong_shape, "; "))
                if keys]
    raise CheckpointError(f"the state dict does not fit {description}; nothing was loaded: " + "; ".join(problems))
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(filled))


def conv_weight(kernel: np.ndarray) -> np.ndarray:
  """flax HWIO (kh, kw, in/groups, out) -> torch Conv2d weight (out, in/groups, kh, kw)."""
  return np.transpose(kernel, (3, 2, 0, 1))


class Leaf(NamedTuple):
  """A torch parameter's leaf in our tree: its name there, and its conversion each way."""
  name: str
  to_ours: Convert
  to_torch: Convert


CONV = {"weight": Leaf("kernel", conv_kernel, conv_weight), "bias": Leaf("bias", same, same)}
LINEAR = {"weight": Leaf("kernel", np.transpose, np.transpose), "bias": Leaf("bias", same, same)}
NORM = {"weight": Leaf("scale", same, same), "bias": Leaf("bias", same, same)}
BATCH_NORM = {**NORM, "running_mean": Leaf("mean", same, same), "running_var": Leaf("var", same, same)}

_PLACEHOLDER = re.compile(r"\{(\d+)\}")


class Rule:
  """One torch module of a layout and where its parameters are in our tree, read both ways.

  `torch` is the module's key ('stages.{0}.blocks.{1}.conv_dw'), `ours` the path of its
  parameters in our tree (('stages_{0}', 'blocks_{1}', 'conv_dw')); each placeholder {i} stands
  for a block index, or, where `choices[i]` is given, for one of its keys (torch's word) and its
  value (ours), e.g. {'q': 'query', ...}. `leaves` maps the torch leaf names to `Leaf`s; a
  Leaf's name may hold placeholders too ('layer_scale{1}').
  """

  def __init__(self, torch: str, ours: Path, leaves: Mapping[str, Leaf],
               choices: Mapping[int, Mapping[str, str]] | None = None):
    self.torch, self.ours, self.leaves = torch, tuple(ours), dict(leaves)
    self.choices = dict(choices or {})
    self._torch_module = self._pattern(torch, lambda c: c.keys())
    self._our_paths = {leaf: self._pattern("/".join(self.ours + (spec.name,)), lambda c: c.values())
                       for leaf, spec in self.leaves.items()}

  def _pattern(self, template: str, words: Callable[[Mapping[str, str]], Iterable[str]]) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    regex = "".join(re.escape(part) if i % 2 == 0 else
                    (f"(?P<g{part}>" + ("|".join(map(re.escape, words(self.choices[int(part)])))
                                        if int(part) in self.choices else r"\d+") + ")")
                    for i, part in enumerate(parts))
    return re.compile(regex)

  def to_ours(self, key: str) -> tuple[Path, Convert] | None:
    """(our path, conversion) of the torch `key`, or None when this rule does not name it."""
    module, _, leaf = key.rpartition(".")
    found = self._torch_module.fullmatch(module)
    if not found or leaf not in self.leaves:
      return None
    values = {int(name[1:]): self.choices.get(int(name[1:]), {}).get(word, word)
              for name, word in found.groupdict().items()}
    spec = self.leaves[leaf]
    return tuple(_fill(part, values) for part in self.ours + (spec.name,)), spec.to_ours

  def to_torch(self, path: Path) -> tuple[str, Convert] | None:
    """(torch key, conversion) of our parameter at `path`, or None when this rule does not name it."""
    for leaf, pattern in self._our_paths.items():
      found = pattern.fullmatch("/".join(path))
      if found:
        words = {int(name[1:]): {v: k for k, v in self.choices.get(int(name[1:]), {}).items()}.get(value, value)
                 for name, value in found.groupdict().items()}
        return f"{_fill(self.torch, words)}.{leaf}", self.leaves[leaf].to_torch
    return None


def _fill(template: str, values: Mapping[int, str]) -> str:
  return _PLACEHOLDER.sub(lambda m: values[int(m.group(1))], template)


def match_rules(rules: Sequence[Rule], key: str) -> tuple[Path, Convert] | None:
  """Our (path, conversion) of a torch key: the first of `rules` that names it; None if none does."""
  return next(filter(None, (rule.to_ours(key) for rule in rules)), None)


def to_state_dict(rules: Sequence[Rule], params: Any, description: str) -> dict[str, np.ndarray]:
  """The torch state dict (key -> contiguous float32 NumPy array) of a parameter tree, each leaf
  under the key the first of `rules` that names its path gives, converted to torch's layout.

  Raises:
    CheckpointError: a parameter that no rule names (naming every such path); nothing partial.
  """
  state_dict, unnamed = {}, []
  for path, leaf in traverse_util.flatten_dict(jax.device_get(params)).items():
    found = next(filter(None, (rule.to_torch(path) for rule in rules)), None)
    if found is None:
      unnamed.append("/".join(path))
      continue
    key, convert = found
    state_dict[key] = np.ascontiguousarray(convert(np.asarray(leaf, np.float32)))
  if unnamed:
    raise CheckpointError(f"{description} has parameters the layout has no key for: {describe(unnamed, limit=None)}")
  return state_dict
