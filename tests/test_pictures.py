"""The pictures: each a PNG of its stated size, titled with model, step and dataset, and drawn
from what it claims (the curves from the metrics files, the map from the features, the sheet's
thumbnails from the matches in order); a picture that cannot be drawn never stops training."""
import json
import logging
import os
import warnings

import numpy as np
from PIL import Image

from artstyle_jax.pictures import curves
from artstyle_jax.pictures import embedding_map
from artstyle_jax.pictures import retrieval_sheet
from artstyle_jax.storage import checkpoints
from artstyle_jax.storage import metric_writer
from helpers import run_program
from helpers import tiny_data_config

TERMS = ("loss", "rel_weak", "rel_style", "gram_weak", "gram_style", "lr", "grad_norm", "health/pooled_rank",
         "health/proj_rank", "health/proj_std", "health/cos_weak", "health/cos_style", "health/entropy_weak",
         "health/entropy_style")
KNN_SIGNALS = ("knn_top1", "knn_rank", "knn_pc1_share")
CURVES_SIZE = (1600, 1200)


def png_size(path):
  """(width, height) in pixels of a valid PNG file."""
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG"
    return image.size


def write_run(workdir, steps, *, knn_every=0, seed=0, dataset="image_folder/synthetic", start=1):
  """A workdir as training leaves it for the curves: config.json and the metrics file of its
  `start`-th start of train, records of `steps` (random values), a kNN record every `knn_every`
  steps. Returns {metric: {step: value}}."""
  config = tiny_data_config(("/nowhere", dataset))
  checkpoints.save_config(str(workdir), config)
  rng = np.random.default_rng(seed)
  logged = {}
  with open(workdir / metric_writer.START_FILE.format(start=start), "a") as f:
    for step in steps:
      record = {term: float(rng.uniform(0.1, 2.0)) for term in TERMS}
      f.write(json.dumps({"step": step, "time": 0.0, **record}) + "\n")
      for term, value in record.items():
        logged.setdefault(term, {})[step] = value
      if knn_every and step % knn_every == 0:
        record = {signal: float(rng.uniform()) for signal in KNN_SIGNALS}
        f.write(json.dumps({"step": step, "time": 0.0, **record}) + "\n")
        for signal, value in record.items():
          logged.setdefault(signal, {})[step] = value
  return logged


def lines_by_gid(fig):
  return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}


def test_curves_draw_every_logged_value_the_last_record_of_a_step_winning(tmp_path):
  """Each metric's raw line is the (step, value) pairs of the metrics files; the steps a resumed
  run logged again (here 21-25, in the second start's file) show their second value, a line cut
  short is skipped; the smoothed line spans the same steps; the title names model, last step and
  dataset; 1600 x 1200 px."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  first = write_run(workdir, range(1, 26), knn_every=10)
  with open(workdir / metric_writer.START_FILE.format(start=1), "a") as f:
    f.write('{"step": 26, "time": 0.0, "loss": 1.\n')  # cut short by a kill -9
  second = write_run(workdir, range(21, 41), knn_every=10, seed=1, start=2)
  fig = curves.write_curves([str(workdir)], workdir / "curves.png")
  assert png_size(workdir / "curves.png") == CURVES_SIZE
  lines = lines_by_gid(fig)
  for metric in (*TERMS, *KNN_SIGNALS):
    expected = {**first[metric], **second[metric]}
    raw = lines[f"run/{metric}/raw"]
    np.testing.assert_array_equal(raw.get_xdata(), sorted(expected))
    np.testing.assert_array_equal(raw.get_ydata(), [expected[s] for s in sorted(expected)])
    if metric != "lr":
      np.testing.assert_array_equal(lines[f"run/{metric}/smoothed"].get_xdata(), sorted(expected))
  np.testing.assert_array_equal(lines["run/knn_top1/raw"].get_xdata(), [10, 20, 30, 40])
  assert "convnext_atto, step 40, image_folder/synthetic" in fig.get_suptitle()


def test_smoothing_follows_the_trend_and_leaves_short_series_alone():
  """An exponential moving average whose time constant is a tenth of the series (weight
  w = 1 - 10/N): constant stays constant; on a ramp it trails by at most its steady-state lag
  w / (1 - w) = N/10 - 1 samples, and from the middle of the series on by at least 0.9 of it
  (measured 0.967 to 0.973 at N = 100, 200, 1000: the debiasing shortens the lag early on); it cuts
  white noise to sqrt((1 - w) / (1 + w)) of its spread (0.16 at N = 200; bound 1.5x that, measured
  0.89x); 10 points are not smoothed."""
  np.testing.assert_allclose(curves.smooth(np.full(50, 3.0)), 3.0)
  for n in (100, 200, 1000):
    ramp = np.linspace(0.0, 1.0, n)
    lag = (ramp - curves.smooth(ramp)) * (n - 1)  # in samples: the ramp rises 1 / (n - 1) per sample
    assert np.all(lag <= (n / 10 - 1) * (1 + 1e-9)) and np.all(lag[n // 2:] >= 0.9 * (n / 10 - 1)), n
  ramp = np.linspace(0.0, 1.0, 200)
  noise = np.random.default_rng(0).normal(0.0, 0.2, 200)
  w = 1 - 10 / 200
  scatter = np.std(curves.smooth(ramp + noise)[50:] - curves.smooth(ramp)[50:])
  assert scatter <= 1.5 * np.sqrt((1 - w) / (1 + w)) * np.std(noise[50:])
  np.testing.assert_array_equal(curves.smooth((ramp + noise)[:10]), (ramp + noise)[:10])


def test_plot_program_overlays_runs_and_refuses_a_workdir_without_metrics(tmp_path):
  """--workdir=a --compare=b (relative, from the user's directory): one picture with both runs'
  lines, at a/curves_compare.png; b never ran the kNN monitor. A workdir with no metrics file:
  one error line, exit 1, nothing written."""
  for name in ("a", "b"):
    (tmp_path / name).mkdir()
  write_run(tmp_path / "a", range(1, 31), knn_every=10)
  write_run(tmp_path / "b", range(1, 21))
  result = run_program("plot", "--workdir=a", "--compare=b", cwd=tmp_path, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(tmp_path / "a" / "curves_compare.png")
  assert png_size(tmp_path / "a" / "curves_compare.png") == CURVES_SIZE
  runs = [curves.run_from_workdir(str(tmp_path / name)) for name in ("a", "b")]
  drawn = set(lines_by_gid(curves.draw_curves(runs)))
  assert {"a/loss/raw", "b/loss/raw", "a/knn_top1/raw"} <= drawn and "b/knn_top1/raw" not in drawn

  (tmp_path / "c").mkdir()
  checkpoints.save_config(str(tmp_path / "c"), tiny_data_config(("/nowhere", "x")))
  before = sorted(os.listdir(tmp_path / "c"))
  result = run_program("plot", "--workdir=c", cwd=tmp_path, timeout=120)
  assert result.returncode == 1
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      f"error: {tmp_path / 'c'} holds no metrics-*.jsonl: the run has logged nothing yet"]
  assert "Traceback" not in result.stderr and sorted(os.listdir(tmp_path / "c")) == before


def test_a_curve_that_cannot_be_drawn_is_one_warning_and_no_exception(tmp_path, caplog):
  """Training redraws the curves at each checkpoint; a workdir it cannot draw (here no
  metrics file) must not stop the run: False, one warning line, no file."""
  (tmp_path / "run").mkdir()
  with caplog.at_level(logging.WARNING):
    assert curves.refresh_curves(str(tmp_path / "run")) is False
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "could not draw curves.png" in warnings[0].getMessage()
  assert "\n" not in warnings[0].getMessage()
  assert not (tmp_path / "run" / "curves.png").exists()
  write_run(tmp_path / "run", range(1, 5))
  assert curves.refresh_curves(str(tmp_path / "run")) is True
  assert png_size(tmp_path / "run" / "curves.png") == CURVES_SIZE


def test_embedding_map_places_the_features_classes_apart_one_colour_each(tmp_path):
  """Three well separated clusters of 64-d features: each class is one scatter whose points are
  the t-SNE coordinates of its features (the same for the same seed), every point's nearest
  neighbour on the map is of its class, the legend names the classes; 1000 x 700 px."""
  rng = np.random.default_rng(0)
  centres = rng.normal(0.0, 1.0, (3, 64))
  labels = np.repeat(np.arange(3), 15)
  features = centres[labels] + rng.normal(0.0, 0.1, (45, 64))
  names = ["baroque", "cubism", "ukiyo-e"]
  fig = embedding_map.draw_embedding(features, labels, names, "convnext_atto (step 7), synthetic test", tmp_path / "e.png")
  assert png_size(tmp_path / "e.png") == (1000, 700)
  coordinates = embedding_map.tsne_coordinates(features, seed=0)
  ax = fig.axes[0]
  scatters = {c.get_gid(): c for c in ax.collections}
  assert sorted(scatters) == [f"class/{name}" for name in names]
  for index, name in enumerate(names):
    np.testing.assert_allclose(scatters[f"class/{name}"].get_offsets(), coordinates[labels == index], rtol=1e-6)
  distances = np.linalg.norm(coordinates[:, None] - coordinates[None], axis=-1) + np.eye(45) * 1e9
  assert (labels[distances.argmin(axis=1)] == labels).all()
  assert [t.get_text() for t in ax.get_legend().get_texts()] == names
  assert ax.get_title().startswith("convnext_atto (step 7), synthetic test")


def write_images(root, names):
  """Small JPEGs of distinct colours at root/name; returns their paths."""
  paths = []
  for i, name in enumerate(names):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48 + 8 * i), (40 * i % 256, 255 - 30 * i % 256, 90)).save(path)
    paths.append(str(path))
  return paths


def test_retrieval_sheet_shows_each_query_then_its_matches_in_order(tmp_path):
  """Two queries, three matches each: a row per query, its thumbnail first, then the matches'
  thumbnails in rank order, each the image of its path, with similarity and class written;
  the styles under the query; 4 x 180 by 2 x 260 + 60 px."""
  queries = write_images(tmp_path, ["q0.jpg", "q1.png"])
  gallery = write_images(tmp_path / "gallery", ["cubism/a.jpg", "cubism/b.jpg", "baroque/c.jpg", "baroque/d.jpg"])
  order = [[2, 0, 3], [1, 3, 0]]
  rows = [retrieval_sheet.SheetRow(query, [(0.7, "cubism"), (0.2, "baroque")],
                            [retrieval_sheet.Match(0.9 - 0.1 * rank, gallery[j], gallery[j].split(os.sep)[-2])
                             for rank, j in enumerate(order[r])])
          for r, query in enumerate(queries)]
  fig = retrieval_sheet.draw_retrieval_sheet(rows, "convnext_atto (step 2), synthetic", tmp_path / "sheet.png")
  assert png_size(tmp_path / "sheet.png") == (720, 580)
  expected = []
  for r, query in enumerate(queries):
    expected += [f"query/{query}"] + [f"match/{rank}/{gallery[j]}" for rank, j in enumerate(order[r], start=1)]
  assert [ax.get_gid() for ax in fig.axes] == expected
  for ax in fig.axes:
    path = ax.get_gid().split("/", 1 if ax.get_gid().startswith("query/") else 2)[-1]
    np.testing.assert_array_equal(ax.images[0].get_array(), retrieval_sheet._thumbnail(path))
  first_match_texts = [t.get_text() for t in fig.axes[1].texts] + [fig.axes[1].get_title()]
  assert "#1  similarity 0.900" in first_match_texts and any("class: baroque" in t for t in first_match_texts)
  assert any("0.700  cubism" in t.get_text() for t in fig.axes[0].texts)
  assert "convnext_atto (step 2), synthetic" in fig.texts[0].get_text()


def test_gallery_classes_are_first_folders_of_a_class_per_folder_tree():
  assert retrieval_sheet.folder_classes("/g", ["/g/cubism/a.jpg", "/g/baroque/x/b.jpg"]) == ["cubism", "baroque"]
  assert retrieval_sheet.folder_classes("/g", ["/g/cubism/a.jpg", "/g/b.jpg"]) == [None, None]



def test_curves_of_a_run_that_has_logged_nothing_yet_say_so_in_every_panel_without_a_warning(tmp_path):
  """A first checkpoint before the first logged step: the metrics file exists but is empty; every
  panel says 'not logged', no legend is drawn and matplotlib warns of nothing (a warning would
  be noise on the training's stderr)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  checkpoints.save_config(str(workdir), tiny_data_config(("/nowhere", "image_folder/synthetic")))
  (workdir / metric_writer.START_FILE.format(start=1)).touch()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    fig = curves.write_curves([str(workdir)], workdir / "curves.png")
  assert png_size(workdir / "curves.png") == CURVES_SIZE
  assert all([t.get_text() for t in ax.texts] == ["not logged"] for ax in fig.axes)
  assert all(ax.get_legend() is None for ax in fig.axes) and not lines_by_gid(fig)
