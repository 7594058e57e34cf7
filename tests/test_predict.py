"""The prediction program: top-k styles from eval's linear head, gallery ranking by style
similarity with the gallery's retrieval scores, and one clear error line for a bad image or a
workdir eval has not seen."""
import functools
import glob
import io
import os
import shutil

from PIL import Image
import pytest

from artstyle_jax.data import images
from artstyle_jax.data import sources
from artstyle_jax.pictures import retrieval_sheet
from artstyle_jax.runs import evaluation
from artstyle_jax.runs import prediction
from artstyle_jax.runs import saved_run
from artstyle_jax.storage import checkpoints
from helpers import file_stamps
from helpers import make_workdir
from helpers import run_program

TOP_K = 3


def parse(stdout):
  """{image path: {'style': [(probability, name)], 'match': [(similarity, path)]}} of predict's output
  (its gallery retrieval line left out)."""
  parsed, current = {}, None
  for line in stdout.splitlines():
    if line.startswith("gallery retrieval"):
      continue
    if not line.startswith("  "):
      current = parsed.setdefault(line, {"style": [], "match": []})
    else:
      kind, value, name = line.split(maxsplit=2)
      current[kind].append((float(value), name))
  return parsed


@pytest.fixture(scope="module")
def evaluated_workdir(tmp_path_factory, synthetic_data):
  """A workdir with a checkpoint of step 2 and the head of a fast-mode eval."""
  path = tmp_path_factory.mktemp("predict") / "run"
  config, _ = make_workdir(path, synthetic_data, steps=(2,))
  evaluation.evaluate_workdir(str(path), config, verbose=False)
  return path


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory, synthetic_data):
  """Query images (a test JPEG and a test image re-saved as RGBA PNG) and a gallery of training
  images in nested folders holding an exact copy of the first query, beside files that are
  skipped (a text file, a hidden '._' file)."""
  data_dir, name = synthetic_data
  root = tmp_path_factory.mktemp("images")
  test = sources.open_split(name, data_dir, "test")
  train = sources.open_split(name, data_dir, "train")
  jpeg = root / "query.jpg"
  jpeg.write_bytes(test[0]["image"])
  png = root / "query.png"
  Image.open(io.BytesIO(test[5]["image"])).convert("RGBA").save(png)
  gallery = root / "gallery"
  (gallery / "a" / "b").mkdir(parents=True)
  for i in range(12):
    (gallery / ("a" if i % 2 else "a/b") / f"train_{i}.jpg").write_bytes(train[i]["image"])
  (gallery / "a" / "b" / "copy_of_query.jpg").write_bytes(test[0]["image"])
  (gallery / "notes.txt").write_text("not an image file name")
  (gallery / "a" / "._train_1.jpg").write_text("a hidden file (macOS metadata), not an image")
  return [str(jpeg), str(png)], str(gallery)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, evaluated_workdir, image_paths):
  """The program run as a user runs it, from a directory above the workdir and the images, every
  path relative to it; it prints the images' absolute paths."""
  queries, gallery = image_paths
  cwd = tmp_path_factory.getbasetemp()
  relative = functools.partial(os.path.relpath, start=cwd)
  return run_program("predict", f"--workdir={relative(evaluated_workdir)}", f"--top_k={TOP_K}",
                     f"--gallery={relative(gallery)}", "--num_matches=4", *map(relative, queries), cwd=cwd)


def test_prints_the_top_k_styles_per_image_most_probable_first(predicted, image_paths, synthetic_data):
  assert predicted.returncode == 0, predicted.stderr
  queries, _ = image_paths
  parsed = parse(predicted.stdout)
  assert list(parsed) == queries
  data_dir, name = synthetic_data
  class_names = sources.label_names(name, data_dir)
  for query in queries:
    styles = parsed[query]["style"]
    probabilities = [p for p, _ in styles]
    assert len(styles) == TOP_K
    assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1.0 + 1e-3
    assert probabilities == sorted(probabilities, reverse=True)
    assert len({name for _, name in styles}) == TOP_K and all(name in class_names for _, name in styles)


def test_gallery_ranking_puts_an_exact_duplicate_of_the_query_first(predicted, image_paths):
  assert predicted.returncode == 0, predicted.stderr
  queries, gallery = image_paths
  matches = parse(predicted.stdout)[queries[0]]["match"]
  assert len(matches) == 4
  assert matches[0] == (pytest.approx(1.0, abs=1e-4), os.path.join(gallery, "a", "b", "copy_of_query.jpg"))
  similarities = [s for s, _ in matches]
  assert similarities == sorted(similarities, reverse=True)
  assert all(path.endswith(".jpg") for _, path in matches)


def test_a_class_per_folder_gallery_gets_its_retrieval_scores_on_the_last_line(predicted):
  """Every image of the gallery lies under its one class folder 'a': each image's 4 matches among
  the other 12 are all of its class, precision@4 and mAP@4 1."""
  assert predicted.stdout.splitlines()[-1] == ("gallery retrieval (each of its 13 images against the others, whitened "
                                               "features): precision@4 1.0000  mAP@4 1.0000")


def test_a_gallery_that_is_not_class_per_folder_gets_no_retrieval_scores(tmp_path, evaluated_workdir, image_paths):
  queries, gallery = image_paths
  flat = tmp_path / "flat"
  flat.mkdir()
  for i, path in enumerate(sorted(glob.glob(os.path.join(gallery, "a", "*.jpg")))):
    shutil.copy(path, flat / f"{i}.jpg")
  lines = prediction.predict(str(evaluated_workdir), queries[:1], gallery=str(flat), num_matches=2)
  assert lines[-1].startswith("  match") and not any(line.startswith("gallery retrieval") for line in lines)


def test_sheet_draws_each_image_then_its_printed_matches_in_order(tmp_path, evaluated_workdir, image_paths,
                                                                monkeypatch):
  """The sheet shows what predict prints: per query, its thumbnail with the printed styles, then
  the printed matches' thumbnails in rank order, each with its gallery class (first folder)."""
  queries, gallery = image_paths
  drawn = []

  def keep_figure(*args, **kwargs):
    drawn.append(draw(*args, **kwargs))
    return drawn[-1]

  draw = retrieval_sheet.draw_retrieval_sheet
  monkeypatch.setattr(retrieval_sheet, "draw_retrieval_sheet", keep_figure)
  lines = prediction.predict(str(evaluated_workdir), queries, top_k=TOP_K, gallery=gallery, num_matches=4,
                          sheet=str(tmp_path / "sheet.png"))
  printed = parse("\n".join(lines))
  expected = []
  for query in queries:
    expected += [f"query/{query}"] + [f"match/{rank}/{path}" for rank, (_, path) in
                                      enumerate(printed[query]["match"], start=1)]
  fig = drawn[0]
  assert [ax.get_gid() for ax in fig.axes] == expected
  assert all("class: a" in ax.texts[0].get_text() for ax in fig.axes if ax.get_gid().startswith("match/"))
  query_text = fig.axes[0].texts[0].get_text()
  assert [line.split()[-1] for line in query_text.splitlines()] == [name for _, name in printed[queries[0]]["style"]]
  assert "convnext_atto (step 2" in fig.texts[0].get_text()
  assert Image.open(tmp_path / "sheet.png").size == (5 * 180, 2 * 260 + 60)


def test_sheet_flag_writes_the_png_relative_to_the_users_directory(tmp_path, evaluated_workdir, image_paths):
  queries, gallery = image_paths
  result = run_program("predict", f"--workdir={evaluated_workdir}", f"--gallery={gallery}", "--num_matches=2",
                       "--sheet=sheet.png", queries[0], cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  with Image.open(tmp_path / "sheet.png") as sheet:
    assert sheet.format == "PNG" and sheet.size == (4 * 180, 260 + 60)  # 3 images, 4 columns at least


def test_a_sheet_in_a_missing_directory_is_refused_before_the_model_loads(tmp_path, evaluated_workdir, image_paths):
  before = file_stamps(tmp_path)
  with pytest.raises(FileNotFoundError, match="the sheet's directory .* does not exist"):
    prediction.predict(str(evaluated_workdir), image_paths[0], sheet=str(tmp_path / "missing" / "sheet.png"))
  assert file_stamps(tmp_path) == before


def test_a_file_that_is_not_an_image_gives_one_error_line_naming_it(tmp_path, evaluated_workdir):
  image = tmp_path / "page.jpg"
  image.write_text("<html>404</html>")
  before = file_stamps(evaluated_workdir), file_stamps(tmp_path)
  result = run_program("predict", f"--workdir={evaluated_workdir}", str(image))
  assert result.returncode == 1
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      f"error: {image}: not an image PIL can read"]
  assert "Traceback" not in result.stderr and not result.stdout
  assert (file_stamps(evaluated_workdir), file_stamps(tmp_path)) == before


@pytest.mark.parametrize("case, error, message", [
    ("missing_image", images.BadImageError, "missing.jpg: no such file"),
    ("directory_as_image", images.BadImageError, ": not a file"),
    ("missing_gallery", FileNotFoundError, "is not a directory"),
    ("not_evaluated", checkpoints.WorkdirError, "run `python -m artstyle_jax.eval --workdir="),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, evaluated_workdir, image_paths, case, error,
                                                                 message):
  workdir, paths, gallery = evaluated_workdir, [image_paths[0][0]], None
  if case == "missing_image":
    paths.append(str(tmp_path / "missing.jpg"))
  elif case == "directory_as_image":
    paths.append(str(tmp_path))
  elif case == "missing_gallery":
    gallery = str(tmp_path / "gallery")
  else:
    workdir = tmp_path / "run"
    shutil.copytree(evaluated_workdir, workdir, ignore=shutil.ignore_patterns(saved_run.EVAL_DIR))
  before = file_stamps(workdir), file_stamps(tmp_path)
  with pytest.raises(error) as raised:
    prediction.predict(str(workdir), paths, gallery=gallery)
  assert message in str(raised.value) and "\n" not in str(raised.value)
  assert (file_stamps(workdir), file_stamps(tmp_path)) == before
