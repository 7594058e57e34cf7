"""import_torch turns a checkpoint of the authors' PyTorch code into a workdir train/eval/predict use.

The checkpoint is tests/authors_checkpoint.py's, written with torch exactly as the authors' code
writes it: their model (student `net.net`, teachers `encoder_k.net` and `encoder_style.net` with
timm features-only ConvNeXt keys, heads `head_q/k/style` with `linear` and `out`, buffers `queue`
(D, K) and `queue_ptr`), a torch SGD over `model.parameters()` after one step, and the epoch. The
student is the timm fixture (ConvNeXt depths (1, 1, 2, 1), dims (8, 16, 24, 32)), the teachers
perturbed copies.
"""
import dataclasses
import functools
import pathlib
import re

from authors_checkpoint import AUTHORS_DEPTHS as DEPTHS
from authors_checkpoint import AUTHORS_DIMS as DIMS
from authors_checkpoint import AUTHORS_EPOCH as EPOCH
from authors_checkpoint import AUTHORS_HIDDEN as HIDDEN
from authors_checkpoint import AUTHORS_OVERRIDES
from authors_checkpoint import authors_paper_config
from authors_checkpoint import AUTHORS_PROJ as PROJ
from authors_checkpoint import AUTHORS_PTR as PTR
from authors_checkpoint import AUTHORS_QUEUE as QUEUE
from authors_checkpoint import AUTHORS_SIZE
from authors_checkpoint import authors_size_registered
from authors_checkpoint import AuthorsModel
from authors_checkpoint import FeaturesOnlyConvNeXt
from authors_checkpoint import timm_features_only_state_dict
from authors_checkpoint import write_authors_checkpoint
import jax
import numpy as np
import optax
import pytest
import torch

from artstyle_jax.method import config_lib
from artstyle_jax.method import optim
from artstyle_jax.method import sharding
from artstyle_jax.method import state as state_lib
from artstyle_jax.method import step as step_lib
from artstyle_jax.models import convnext
from artstyle_jax.runs import authors_import
from artstyle_jax.storage import checkpoints
from helpers import assert_trees_equal
from helpers import file_contents
from helpers import FIXTURES
from helpers import relative_error
from helpers import REPO
from helpers import run_python

ITERS_PER_EPOCH = 5
# Batch 4 divides the queue of 16; 32 px is the smallest image size the config accepts.


def expected_backbone(torch_state):
  """Our ConvNeXt parameter tree for timm features-only tensors, written out here independently of
  convnext_weights.params_from_timm: conv (O, I, kh, kw) -> kernel (kh, kw, I, O), Linear (out, in) ->
  kernel (in, out), LayerNorm weight -> scale."""
  params = {}
  for key, tensor in torch_state.items():
    module, leaf = key.rsplit(".", 1)
    for timm_name, name in (("stem_0", "stem_conv"), ("stem_1", "stem_norm"), ("downsample.0", "downsample_norm"),
                            ("downsample.1", "downsample_conv"), ("mlp.", "")):
      module = module.replace(timm_name, name)
    module = re.sub(r"blocks\.(\d+)", r"blocks_\1", module)
    value = tensor.detach().numpy()
    if value.ndim == 4:
      value, leaf = value.transpose(2, 3, 1, 0), "kernel"
    elif value.ndim == 2:
      value, leaf = value.T, "kernel"
    elif leaf == "weight":
      leaf = "scale"
    node = params
    for part in module.split("."):
      node = node.setdefault(part, {})
    node[leaf] = value
  return params


def expected_head(head):
  return {layer: {"kernel": getattr(head, layer).weight.detach().numpy().T,
                  "bias": getattr(head, layer).bias.detach().numpy()} for layer in ("linear", "out")}


def expected_network(encoder, head):
  return {"backbone": expected_backbone(encoder.net.state_dict()), "head": expected_head(head)}


def run_cli(*args, cwd=REPO):
  """`python -m artstyle_jax.tools.import_torch ARGS` run from `cwd`, with the fixture's ConvNeXt
  size registered."""
  program = (f"import runpy, sys; from artstyle_jax.models import convnext; "
             f"convnext.SIZES[{AUTHORS_SIZE!r}] = ({DEPTHS}, {DIMS}); "
             f"sys.argv = ['import_torch'] + sys.argv[1:]; "
             f"runpy.run_module('artstyle_jax.tools.import_torch', run_name='__main__')")
  return run_python("-c", program, *args, cwd=cwd, timeout=300)


@pytest.fixture(scope="module", autouse=True)
def fixture_size():
  with authors_size_registered():
    yield


class Imported:
  """The authors' checkpoint imported by the command line, run from the checkpoint's directory
  with relative paths, and its workdir restored."""

  def __init__(self, root):
    self.model, self.torch_optimizer = write_authors_checkpoint(root / "authors.pth")
    self.workdir = str(root / "workdir")
    self.cli = run_cli("authors.pth", "--workdir=workdir", f"--iters_per_epoch={ITERS_PER_EPOCH}",
                       *(f"--config.{o}" for o in AUTHORS_OVERRIDES), cwd=root)
    assert self.cli.returncode == 0, self.cli.stderr
    self.config = checkpoints.load_config(self.workdir)
    # XLA:CPU compiles a train step in the plain forms (the grouped depthwise convolution) several
    # times faster than in the CPU's forms, which run faster; parameters are the same.
    self.backbone = convnext.create(self.config.model.name)
    self.head = step_lib.build_head(self.config)
    self.optimizer, self.schedule = optim.create(self.config, ITERS_PER_EPOCH)
    self.mesh = sharding.create_mesh(devices=jax.devices()[:1])
    create = functools.partial(state_lib.create, config=self.config, backbone=self.backbone, head=self.head,
                               optimizer=self.optimizer)
    abstract = jax.eval_shape(create, jax.random.PRNGKey(1))
    self.shardings = sharding.state_sharding(abstract, self.mesh, self.config.mesh.fsdp_min_size)
    with checkpoints.manager(self.workdir, read_only=True) as mngr:
      self.step = mngr.latest_step()
      self.state, _ = checkpoints.restore(mngr, self.step, checkpoints.abstract_like(abstract, self.shardings))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  return Imported(tmp_path_factory.mktemp("import"))


def test_the_torch_stand_in_computes_what_timm_computes():
  """The test's features-only torch ConvNeXt, holding the timm fixture, gives timm's stage outputs."""
  io = np.load(FIXTURES / "timm_convnext_small_random_io.npz")
  model = FeaturesOnlyConvNeXt()
  model.load_state_dict(timm_features_only_state_dict())
  with torch.no_grad():
    outputs = model(torch.from_numpy(io["input_nchw"]))
  for stage, output in enumerate(outputs):
    np.testing.assert_allclose(output.numpy(), io[f"stage{stage}"], rtol=1e-4, atol=1e-4)


def test_cli_writes_config_and_one_state_checkpoint_at_epoch_times_iters(imported):
  """The workdir holds config.json and one checkpoint, at step epoch * iters_per_epoch, with the
  item 'state' only; the config is the paper's with what the checkpoint fixes."""
  assert imported.step == EPOCH * ITERS_PER_EPOCH
  assert sorted(p.name for p in (pathlib.Path(imported.workdir) / "checkpoints").iterdir()) == [str(imported.step)]
  items = {p.name for p in (pathlib.Path(imported.workdir) / "checkpoints" / str(imported.step)).iterdir()
           if p.is_dir()}
  assert items == {"state"}
  config = imported.config
  assert (config.model.name, config.model.proj_hidden_dim, config.model.proj_dim) == (AUTHORS_SIZE, HIDDEN, PROJ)
  assert (config.queue_size, config.batch_size, config.share_teachers) == (QUEUE, 4, False)
  assert (config.optim.momentum, config.optim.weight_decay) == (0.9, 5e-4)
  assert f"step {imported.step}" in imported.cli.stdout
  assert (f"python -m artstyle_jax.train --config={config_lib.packaged_config('paper.py')} --workdir={imported.workdir} --config.batch_size=4 "
          f"--config.image_size=32 --config.model.name={AUTHORS_SIZE} --config.model.proj_dim={PROJ} "
          f"--config.model.proj_hidden_dim={HIDDEN} --config.queue_size={QUEUE} --config.share_teachers=False"
          ) in imported.cli.stdout


def test_student_teachers_and_queue_equal_the_torch_tensors(imported):
  """Student <- net.net/head_q, teacher W <- encoder_k/head_k, teacher S <- encoder_style/head_style
  (two copies: the teachers differ), tensors transposed to flax layouts; queue (D, K) -> (K, D)."""
  model, state = imported.model, imported.state
  assert_trees_equal(state.params, expected_network(model.net, model.head_q))
  assert sorted(state.teachers) == ["style", "weak"]
  assert_trees_equal(state.teachers["weak"], expected_network(model.encoder_k, model.head_k))
  assert_trees_equal(state.teachers["style"], expected_network(model.encoder_style, model.head_style))
  np.testing.assert_array_equal(state.queue, model.queue.numpy().T)
  assert int(state.queue_ptr) == PTR and int(state.step) == EPOCH * ITERS_PER_EPOCH


def test_momentum_buffers_become_the_trace_and_the_schedule_continues(imported):
  """torch's SGD momentum buffers are the optax trace (zero for a tensor torch never stepped), and
  the optimiser's step count is the imported step, so the learning rate continues from there."""
  model, state = imported.model, imported.state
  student = {"net.": model.net, "head_q.": model.head_q}
  buffers = {}
  for name, parameter in model.named_parameters():
    if name.startswith(tuple(student)):
      buffer = imported.torch_optimizer.state.get(parameter, {}).get("momentum_buffer")
      buffers[name] = torch.zeros_like(parameter) if buffer is None else buffer
  assert not buffers["head_q.out.bias"].any() and buffers["head_q.out.weight"].any()
  encoder_buffers = {k[len("net.net."):]: v for k, v in buffers.items() if k.startswith("net.net.")}
  head_buffers = {k[len("head_q."):]: v.numpy() for k, v in buffers.items() if k.startswith("head_q.")}
  trace = optax.tree_utils.tree_get(state.opt_state, "trace")
  assert_trees_equal(trace["backbone"], expected_backbone(encoder_buffers))
  assert_trees_equal(trace["head"], {layer: {"kernel": head_buffers[f"{layer}.weight"].T,
                                             "bias": head_buffers[f"{layer}.bias"]} for layer in ("linear", "out")})
  assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == EPOCH * ITERS_PER_EPOCH


def test_imported_student_reproduces_timm_stage_outputs(imported):
  """The imported student backbone on the fixture's image gives timm's stored last-stage map."""
  io = np.load(FIXTURES / "timm_convnext_small_random_io.npz")
  images = np.transpose(io["input_nchw"], (0, 2, 3, 1))
  features = jax.jit(imported.backbone.apply)({"params": imported.state.params["backbone"]}, images)
  np.testing.assert_allclose(features[-1], np.transpose(io["stage3"], (0, 2, 3, 1)), rtol=1e-4, atol=1e-4)


def authors_gram_loss(f_s, f_t):
  """artstyle_jax/METHOD.md step 4 in plain torch, on (B, C, h, w) maps: centred Gram of the mean
  map against each map's Gram, cosines over the whole batch."""
  def gram(f):
    f = f.flatten(2)
    return f @ f.transpose(1, 2)

  a = gram((f_s + f_t) / 2)
  a = a - a.mean(dim=(1, 2), keepdim=True)
  cosine = lambda u, v: torch.nn.functional.cosine_similarity(u.flatten(), v.flatten(), dim=0)
  return 0.5 * (1 - cosine(a, gram(f_s))) + 0.5 * (1 - cosine(a, gram(f_t)))


def authors_relation_loss(z_s, z_t, queue):
  """METHOD.md step 3 with the authors' (D, K) queue: teacher softmax at 0.04, student at 0.1."""
  target = torch.softmax(z_t @ queue / 0.04, dim=1)
  return -(target * torch.log_softmax(z_s @ queue / 0.1, dim=1)).sum(dim=1).mean()


def authors_next_step(path, batch, lr):
  """The authors' training loop resumed from the checkpoint at `path` for one step, in plain torch:
  model and SGD rebuilt and loaded from the file, EMA of both teachers (0.99), the four terms,
  backward, SGD (lr, momentum 0.9, weight decay 5e-4, the loaded momentum buffers), enqueue of the
  weak then the style keys. Returns (model, optimizer) after the step."""
  checkpoint = torch.load(path, weights_only=True)
  model = AuthorsModel()
  model.load_state_dict(checkpoint["model"])
  for module in (model.encoder_k, model.head_k, model.encoder_style, model.head_style):
    module.requires_grad_(False)
  optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
  optimizer.load_state_dict(checkpoint["optimizer"])
  for group in optimizer.param_groups:
    group["lr"] = lr
  views = {view: torch.from_numpy(images.transpose(0, 3, 1, 2).copy()) for view, images in batch.items()}
  with torch.no_grad():
    student = list(model.net.net.parameters()) + list(model.head_q.parameters())
    for encoder, head in ((model.encoder_k, model.head_k), (model.encoder_style, model.head_style)):
      for teacher, s in zip(list(encoder.net.parameters()) + list(head.parameters()), student):
        teacher.mul_(0.99).add_(s, alpha=0.01)
    f_w = model.encoder_k.net(views["weak"])[-1]
    z_w = model.head_k(f_w.mean(dim=(2, 3)))
    f_y = model.encoder_style.net(views["style"])[-1]
    z_y = model.head_style(f_y.mean(dim=(2, 3)))
  f_s = model.net.net(views["student"])[-1]
  z_s = model.head_q(f_s.mean(dim=(2, 3)))
  loss = 0.5 * (authors_relation_loss(z_s, z_w, model.queue) + authors_relation_loss(z_s, z_y, model.queue)
                + authors_gram_loss(f_s, f_w) + authors_gram_loss(f_s, f_y))
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  with torch.no_grad():
    ptr = int(model.queue_ptr)
    for keys in (z_w, z_y):
      model.queue[:, ptr:ptr + len(keys)] = keys.T
      ptr = (ptr + len(keys)) % model.queue.shape[1]
    model.queue_ptr[0] = ptr
  return model, optimizer


def student_momentum(model, optimizer):
  """The SGD momentum buffers of the student (net.net, head_q) as our parameter tree."""
  buffers = {name: optimizer.state[p]["momentum_buffer"] for name, p in model.named_parameters()
             if name.startswith(("net.net.", "head_q."))}
  head = {layer: {"kernel": buffers[f"head_q.{layer}.weight"].numpy().T, "bias": buffers[f"head_q.{layer}.bias"].numpy()}
          for layer in ("linear", "out")}
  return {"backbone": expected_backbone({k[len("net.net."):]: v for k, v in buffers.items() if k.startswith("net.net.")}),
          "head": head}


# Measured (one step at the imported step 15, lr 1.5e-4), leaf by leaf (relative_error): our new
# momentum trace within 2.0e-6 of torch's buffers, the teachers within 1.2e-7, the queue's keys within
# 6e-7 (absolute, unit vectors); bounds 5x, 8x and 2x those. The parameter update (after minus
# before) agrees within 1.8e-4 only: it is about 1e-4 of the parameters, and each side rounds
# p - lr * buf to float32 once, so a rounding of p is up to 1e-4 of the update; bound 1e-3 (5.6x).
# The imported buffer's part of the new one, 0.9 * buf, is 0.7% to 6% of it in every leaf that has
# one: a step that ignored the imported momentum would miss the bound by over 700x.
MOMENTUM_RTOL = 1e-5
UPDATE_RTOL = 1e-3
TEACHER_RTOL = 1e-6
QUEUE_ATOL = 1.2e-6


def test_training_continues_from_the_imported_state_as_the_authors_sgd_would(imported, tmp_path):
  """Our next train step from the imported state equals the authors' torch loop resumed from the
  same checkpoint for one step (model and SGD loaded from the file, plain torch): the same learning
  rate (the schedule's at the imported step), the same new momentum buffers (0.9 x the imported
  buffer + gradient + weight decay: the imported momentum is used), the same parameter update, EMA
  teachers and enqueued keys; the step and the queue pointer advance."""
  lr = float(imported.schedule(EPOCH * ITERS_PER_EPOCH))
  train_step = step_lib.compile_train_step(
      step_lib.make_train_step(imported.config, imported.backbone, imported.head, imported.optimizer,
                               imported.schedule), imported.shardings, imported.mesh)
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  batch = {view: np.asarray(jax.random.normal(key, (4, 32, 32, 3))) for view, key in zip(("student", "weak", "style"), keys)}
  before = jax.tree.map(np.asarray, imported.state)
  state, metrics = train_step(jax.device_put(before, imported.shardings), sharding.shard_batch(batch, imported.mesh))
  state = jax.tree.map(np.asarray, state)
  model, optimizer = authors_next_step(pathlib.Path(imported.workdir).parent / "authors.pth", batch, lr)

  assert np.isfinite(float(metrics["loss"]))
  np.testing.assert_allclose(float(metrics["lr"]), lr, rtol=1e-7)
  assert int(state.step) == EPOCH * ITERS_PER_EPOCH + 1
  assert int(state.queue_ptr) == (PTR + 2 * 4) % QUEUE == int(model.queue_ptr)

  trace, buffers = optax.tree_utils.tree_get(state.opt_state, "trace"), student_momentum(model, optimizer)
  old_trace = optax.tree_utils.tree_get(before.opt_state, "trace")
  expected_params = expected_network(model.net, model.head_q)
  for (path, got), want, old, p_after, p_before in zip(
      jax.tree_util.tree_leaves_with_path(trace), jax.tree.leaves(buffers), jax.tree.leaves(old_trace),
      jax.tree.leaves(expected_params), jax.tree.leaves(before.params)):
    name = jax.tree_util.keystr(path)
    assert relative_error(got, want) <= MOMENTUM_RTOL, (name, relative_error(got, want))
    if np.any(old):  # the imported buffer is a large part of the new one: dropping it would fail above
      assert relative_error(want - 0.9 * old, want) > 100 * MOMENTUM_RTOL, name
  assert any(np.any(old) for old in jax.tree.leaves(old_trace))
  update = jax.tree.map(np.subtract, state.params, before.params)
  expected_update = jax.tree.map(np.subtract, expected_params, before.params)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(update), jax.tree.leaves(expected_update)):
    assert relative_error(got, want) <= UPDATE_RTOL, (jax.tree_util.keystr(path), relative_error(got, want))
  for name, (encoder, head) in (("weak", (model.encoder_k, model.head_k)), ("style", (model.encoder_style, model.head_style))):
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state.teachers[name]),
                                 jax.tree.leaves(expected_network(encoder, head))):
      assert relative_error(got, want) <= TEACHER_RTOL, (name, jax.tree_util.keystr(path))
  np.testing.assert_allclose(state.queue, model.queue.numpy().T, rtol=0, atol=QUEUE_ATOL)


def test_cli_refuses_a_workdir_that_holds_a_run(imported, tmp_path):
  """Importing into a workdir with a run fails with one error line and exit 1, and changes nothing."""
  workdir = pathlib.Path(imported.workdir)
  before = file_contents(workdir)
  result = run_cli(str(tmp_path / "any.pth"), f"--workdir={workdir}", "--step=0")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {workdir} already holds a run")
  assert file_contents(workdir) == before


def test_identical_teachers_import_as_one_shared_copy(tmp_path):
  """Teachers W and S equal in the checkpoint: the state keeps one copy (share_teachers, equal momenta)."""
  model, _ = write_authors_checkpoint(tmp_path / "authors.pth", identical_teachers=True)
  checkpoint = authors_import.read(str(tmp_path / "authors.pth"))
  config = authors_import.checkpoint_config(checkpoint, authors_paper_config())
  state = authors_import.to_state(checkpoint, config, step=7)
  assert config.share_teachers and list(state.teachers) == ["weak"]
  assert_trees_equal(state.teachers["weak"], expected_network(model.encoder_style, model.head_style))
  assert int(state.step) == 7


def test_optimizer_over_the_student_parameters_alone_maps_the_same_buffers(tmp_path):
  """An SGD given only the student's parameters numbers them differently; the buffers land alike."""
  write_authors_checkpoint(tmp_path / "all.pth")
  write_authors_checkpoint(tmp_path / "student.pth", student_only_optimizer=True)
  every, student_only = authors_import.read(str(tmp_path / "all.pth")), authors_import.read(str(tmp_path / "student.pth"))
  assert any(np.any(v) for v in every.momentum.backbone.values())
  jax.tree.map(np.testing.assert_array_equal, dataclasses.asdict(student_only.momentum),
               dataclasses.asdict(every.momentum))
