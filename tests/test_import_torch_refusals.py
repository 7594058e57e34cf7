"""import_torch refuses what is not a checkpoint of the authors' PyTorch code, or a config that
contradicts one, before it writes anything; and the import's step and model size rules.

The checkpoints are tests/authors_checkpoint.py's, edited to hold one defect each.
"""
import dataclasses

from authors_checkpoint import AUTHORS_DIMS as DIMS
from authors_checkpoint import AUTHORS_EPOCH as EPOCH
from authors_checkpoint import authors_paper_config
from authors_checkpoint import AUTHORS_PROJ as PROJ
from authors_checkpoint import AUTHORS_QUEUE as QUEUE
from authors_checkpoint import authors_size_registered
from authors_checkpoint import write_authors_checkpoint
import numpy as np
import pytest
import torch

from artstyle_jax.data import sources
from artstyle_jax.runs import authors_import

ITERS_PER_EPOCH = 5


@pytest.fixture(scope="module", autouse=True)
def fixture_size():
  with authors_size_registered():
    yield


def _renamed(checkpoint, old, new):
  checkpoint[new] = checkpoint.pop(old)
  return checkpoint


def _edit_model(checkpoint, drop=(), add=(), **replace):
  model = checkpoint["model"]
  for key in list(model):
    if key.startswith(tuple(drop)):
      del model[key]
  for key in add:
    model[key] = torch.zeros(3)
  model.update(replace)
  return checkpoint


def _edit_optimizer(checkpoint, **group):
  checkpoint["optimizer"]["param_groups"][0].update(group)
  return checkpoint


BAD_CHECKPOINTS = {
    "state_dict_key": (lambda c: _renamed(c, "model", "state_dict"),
                       r"missing model; unexpected state_dict"),
    "bare_state_dict": (lambda c: c["model"],
                        r"missing model, optimizer, epoch; unexpected encoder_k.*\(\d+ in all\)"),
    "head_missing_and_classifier_added": (
        lambda c: _edit_model(c, drop=["head_style.out.bias"], add=["net.fc.weight"]),
        r"missing head_style\.out\.bias; unexpected model keys net\.fc\.weight"),
    "teacher_lacks_a_block": (
        lambda c: _edit_model(c, drop=["encoder_style.net.stages_2.blocks.1."]),
        r"encoder_style\.net\.\* has keys the student lacks \(none\) and lacks keys the student has "
        r"\(stages_2\.blocks\.1\.conv_dw\.bias"),
    "queue_ptr_past_the_queue": (lambda c: _edit_model(c, queue_ptr=torch.tensor([QUEUE])),
                                 rf"queue_ptr {QUEUE} is outside the queue of {QUEUE} keys"),
    "queue_not_of_head_dim": (lambda c: _edit_model(c, queue=torch.zeros(PROJ + 1, QUEUE)),
                              rf"queue has shape \({PROJ + 1}, {QUEUE}\), expected \(D, K\) with D={PROJ}"),
    "epoch_not_an_integer": (lambda c: {**c, "epoch": 2.5}, r"'epoch' is 2\.5"),
    "nesterov": (lambda c: _edit_optimizer(c, nesterov=True), r"no Nesterov"),
    "optimizer_of_another_model": (lambda c: _edit_optimizer(c, params=list(range(5))),
                                   r"the optimizer holds 5 parameters"),
}


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_refuses_a_file_that_is_not_an_authors_checkpoint(name, tmp_path):
  """Each defect is named in the error (what is missing or unexpected), before the workdir exists."""
  transform, message = BAD_CHECKPOINTS[name]
  write_authors_checkpoint(tmp_path / "bad.pth", transform=transform)
  with pytest.raises(authors_import.CheckpointError, match=message):
    authors_import.import_checkpoint(str(tmp_path / "bad.pth"), str(tmp_path / "workdir"), authors_paper_config(), step=1)
  assert not (tmp_path / "workdir").exists()


def test_refuses_a_file_torch_cannot_read(tmp_path):
  (tmp_path / "notes.pth").write_text("not a checkpoint")
  with pytest.raises(authors_import.CheckpointError, match=r"torch.load\(weights_only=True\) cannot read it"):
    authors_import.read(str(tmp_path / "notes.pth"))


def test_overrides_that_contradict_the_checkpoint_are_refused_optimiser_ones_win(tmp_path):
  """--config.model.proj_dim or share_teachers=True against two different teachers are errors;
  an overridden optim.momentum is kept instead of the checkpoint's."""
  write_authors_checkpoint(tmp_path / "authors.pth")
  checkpoint = authors_import.read(str(tmp_path / "authors.pth"))
  with pytest.raises(authors_import.CheckpointError, match=rf"--config\.model\.proj_dim=64 \(the checkpoint has {PROJ}\)"):
    authors_import.checkpoint_config(checkpoint, authors_paper_config("model.proj_dim=64"), ["model.proj_dim"])
  with pytest.raises(authors_import.CheckpointError, match="its two teachers differ"):
    authors_import.checkpoint_config(checkpoint, authors_paper_config("share_teachers=True"), ["share_teachers"])
  config = authors_import.checkpoint_config(checkpoint, authors_paper_config("optim.momentum=0.8"), ["optim.momentum"])
  assert (config.optim.momentum, config.optim.weight_decay, config.model.proj_dim) == (0.8, 5e-4, PROJ)


def test_step_is_epoch_times_iters_per_epoch_or_given():
  checkpoint, config = dataclasses.replace(_any_checkpoint(), epoch=EPOCH), authors_paper_config()
  assert authors_import.import_step(checkpoint, config, iters_per_epoch=ITERS_PER_EPOCH) == EPOCH * ITERS_PER_EPOCH
  assert authors_import.import_step(checkpoint, config, step=4) == 4
  assert authors_import.import_step(dataclasses.replace(checkpoint, epoch=0), config) == 0
  with pytest.raises(authors_import.CheckpointError, match="give --config.dataset.data_dir .*, --iters_per_epoch or --step"):
    authors_import.import_step(checkpoint, config)
  with pytest.raises(authors_import.CheckpointError, match="not both"):
    authors_import.import_step(checkpoint, config, iters_per_epoch=ITERS_PER_EPOCH, step=4)


def test_iters_per_epoch_defaults_to_train_py_count_on_the_dataset(synthetic_data):
  """With a dataset in the config, an epoch is the training split's size // batch_size."""
  data_dir, name = synthetic_data
  config = authors_paper_config(f"dataset.name={name}", f"dataset.data_dir={data_dir}")
  num_examples = len(sources.open_split(name, data_dir, config.dataset.train_split))
  checkpoint = dataclasses.replace(_any_checkpoint(), epoch=EPOCH)
  assert authors_import.import_step(checkpoint, config) == EPOCH * (num_examples // config.batch_size)


def _any_checkpoint():
  network = authors_import.TorchNetwork({}, {})
  return authors_import.TorchCheckpoint(networks={"student": network}, momentum=network, queue=np.zeros((PROJ, QUEUE)),
                                      queue_ptr=0, epoch=0, sgd_momentum=0.9, weight_decay=5e-4)


def test_a_convnext_of_no_known_size_is_refused():
  with pytest.raises(authors_import.CheckpointError, match=r"depths \(1, 1, 1, 1\).*convnext_atto.*convnext_xlarge"):
    authors_import.model_name((1, 1, 1, 1), DIMS)
  assert authors_import.model_name((3, 3, 27, 3), (128, 256, 512, 1024)) == "convnext_base"
