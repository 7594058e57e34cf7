"""Configs hold the published defaults, the ablations change only what they name, and bad
values are refused when the config is read."""
import pathlib

import pytest

from artstyle_jax.data import pipeline
from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from helpers import config_path
from helpers import load_config

PAPER = config_path("paper")
NAMES = ("paper", "single_teacher", "no_gram", "info_nce", "distinct_momenta", "tiny", "paper_pod")


def _flat(config, prefix=""):
  items = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      items.update(_flat(value, f"{prefix}{key}."))
    else:
      items[prefix + key] = value
  return items


def _changes(name):
  paper = _flat(config_lib.load(PAPER))
  other = _flat(load_config(name))
  assert other.keys() == paper.keys()
  return {k: other[k] for k in paper if other[k] != paper[k]}


@pytest.mark.parametrize("name", NAMES)
def test_every_config_reads_and_validates(name):
  config = load_config(name)
  assert config.queue_size % config.batch_size == 0


def test_paper_config_holds_the_published_defaults():
  c = config_lib.load(PAPER)
  assert (c.model.name, c.model.drop_path_rate, c.model.proj_hidden_dim, c.model.proj_dim) == ("convnext_base", 0.0, 2048, 128)
  assert (c.image_size, c.batch_size, c.num_epochs, c.queue_size) == (352, 16, 25, 4096)
  assert (c.momentum_weak, c.momentum_style, c.style_teacher) == (0.99, 0.99, True)
  assert (c.loss.relation, c.loss.student_temp, c.loss.teacher_temp) == ("ressl", 0.1, 0.04)
  assert dict(c.loss_weights) == {"rel_weak": 0.5, "rel_style": 0.5, "gram_weak": 0.5, "gram_style": 0.5}
  assert (c.optim.base_lr, c.optim.schedule, c.optim.warmup_epochs) == (0.001, "paper", 5)
  assert (c.optim.momentum, c.optim.weight_decay) == (0.9, 5e-4)
  assert tuple(c.views.student.mean) == tuple(c.views.style.mean) == (0.5071, 0.4867, 0.4408)
  assert tuple(c.views.student.std) == tuple(c.views.style.std) == (0.2675, 0.2565, 0.2761)
  assert (tuple(c.views.weak.mean), tuple(c.views.weak.std)) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  assert c.model.dtype == "float32" and not c.model.remat


@pytest.mark.parametrize("chips", [8, 16, 64, 256])
def test_the_pod_config_sizes_the_batch_per_chip_and_scales_the_learning_rate_linearly(chips):
  """paper_pod.py:CHIPS: 32 images per chip, the paper's rate 0.001 times batch / 16, the queue
  the paper's 4096 rounded up to a multiple of the batch; beyond those and the TPU host's input
  and compute settings, the paper's config."""
  config = config_lib.load(f"{config_path('paper_pod')}:{chips}")
  assert config.batch_size == 32 * chips
  assert optim.base_learning_rate(config.optim, config.batch_size) == pytest.approx(0.001 * config.batch_size / 16)
  assert config.queue_size % config.batch_size == 0 and 4096 <= config.queue_size < 4096 + config.batch_size
  changes = {k: v for k, v in _flat(config).items() if v != _flat(config_lib.load(PAPER))[k]}
  assert changes.keys() <= {"batch_size", "queue_size", "model.dtype", "photometric_on_device", "dataset.num_workers",
                            "checkpoint_every_steps"}


def test_ablations_change_only_what_they_name():
  assert _changes("single_teacher") == {
      "style_teacher": False, "loss_weights.rel_weak": 1.0, "loss_weights.rel_style": 0.0,
      "loss_weights.gram_weak": 0.0, "loss_weights.gram_style": 0.0}
  assert _changes("no_gram") == {"loss_weights.gram_weak": 0.0, "loss_weights.gram_style": 0.0}
  assert _changes("info_nce") == {"loss.relation": "info_nce"}
  assert _changes("distinct_momenta") == {"momentum_style": 0.996}


def test_stable_keys_are_overridable_from_the_command_line():
  overrides = {
      "model.name": "convnext_tiny", "image_size": 224, "batch_size": 32, "num_epochs": 10, "queue_size": 1024,
      "momentum_weak": 0.98, "momentum_style": 0.97, "loss_weights.gram_style": 0.25, "dataset.name": "pandora18k",
      "dataset.data_dir": "/data/tfds", "init": "random", "model.dtype": "bfloat16", "model.remat": True}
  config = _flat(config_lib.load(PAPER, [f"{k}={v}" for k, v in overrides.items()]))
  assert {k: config[k] for k in overrides} == overrides


def test_queue_not_a_multiple_of_the_global_batch_is_refused_when_read():
  with pytest.raises(config_lib.ConfigError, match=r"queue_size \(K=4096\) must be a positive multiple of the global batch_size \(24\)"):
    config_lib.load(PAPER, ["batch_size=24"])


@pytest.mark.parametrize("override, message", [
    ("model.dtype=float16", "model.dtype must be one of"),
    ("model.name=resnet50", "model.name must be one of"),
    ("loss.relation=byol", "loss.relation must be one of"),
    ("image_size=100", "multiple of 32"),
    ("momentum_style=1.5", "momentum_style must be in"),
    ("style_teacher=False", "style_teacher=False needs"),
    ("optim.schedule=step", "optim.schedule must be one of"),
    ("optim.warmup_epochs=25", "warmup_epochs"),
])
def test_unusable_values_are_refused_with_a_message(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load(PAPER, [override])


def test_has_key_follows_dotted_paths_into_nested_configs():
  """`--config.a.b=v` names an existing key exactly when has_key(config, 'a.b'); a path through a
  leaf value is no key."""
  config = load_config("tiny")
  assert config_lib.has_key(config, "batch_size") and config_lib.has_key(config, "loss_weights.gram_weak")
  assert not config_lib.has_key(config, "no_such_key")
  assert not config_lib.has_key(config, "loss_weights.no_such_weight")
  assert not config_lib.has_key(config, "batch_size.value")


def test_flatten_names_every_leaf_as_its_override_would():
  """Nested mappings become dotted keys; the leaves, lists among them, are kept as they are."""
  flat = config_lib.flatten({"batch_size": 8, "loss": {"relation": "ressl", "temps": {"student": 0.1}},
                             "views": {"mean": [0.5, 0.4]}})
  assert flat == {"batch_size": 8, "loss.relation": "ressl", "loss.temps.student": 0.1, "views.mean": [0.5, 0.4]}


def test_total_steps_is_num_steps_or_whole_epochs_of_full_batches():
  """num_steps wins when set; otherwise num_epochs times the full batches of an epoch."""
  config = load_config("tiny")  # batch 8, 2 epochs
  steps_per_epoch = pipeline.steps_per_epoch(81, config.batch_size)
  assert config_lib.total_steps(config, steps_per_epoch=steps_per_epoch) == 2 * 10
  config.num_steps = 3
  assert config_lib.total_steps(config, steps_per_epoch=steps_per_epoch) == 3


def test_the_packaged_configs_are_the_repository_configs():
  """artstyle_jax/configs, the programs' defaults and what a wheel ships, is configs/ itself in a clone."""
  for name in NAMES + ("demo", "demo_scratch"):
    assert config_lib.packaged_config(f"{name}.py").resolve() == pathlib.Path(config_path(name)).resolve()


def test_a_config_outside_the_repository_derives_from_the_packaged_one(tmp_path):
  (tmp_path / "mine.py").write_text(
      "from artstyle_jax.method import config_lib\n\n\ndef get_config():\n"
      "  config = config_lib.base_config(__file__, 'paper')\n  config.batch_size = 32\n  return config\n")
  assert _flat(config_lib.load(str(tmp_path / "mine.py"))) == {**_flat(config_lib.load(PAPER)), "batch_size": 32}
