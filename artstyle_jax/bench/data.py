"""Three-view input throughput: `python -m artstyle_jax.bench data [flags]`.

Writes painting-like JPEGs (random colour fields, brush strokes, canvas grain; 500-800 px sides)
to a temporary directory and measures, on the same files in one run, three-view images per
CPU-second (= per host core; the host paths are single-threaded) of:

- `pil`: a plain torchvision-style implementation written here, every op on the host per view
  (PIL crop + resize, ImageEnhance, HSV conversion for hue, ImageFilter.GaussianBlur, NumPy
  normalisation), as the reference code's transforms do;
- `host`: `views.TrainViews` with the photometric ops on the host (float32 views out);
- `split`: the host half of `views.TrainViews` in device mode (uint8 views + parameters out),
  with the device half (`photometric.device_photometric`, jitted) timed separately on the
  default JAX device, in images per second.

With --workers W > 0 it also runs the Grain training pipeline (host and split modes) with W
worker processes and reports its wall-clock images/s. The last line printed is one JSON object.
"""
import io
import json
import os
import pathlib
import tempfile
import time

from absl import flags
import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageEnhance
from PIL import ImageFilter

from artstyle_jax import cli
from artstyle_jax.data import photometric
from artstyle_jax.data import pipeline
from artstyle_jax.data import view_specs
from artstyle_jax.data import views

STUDENT_MEAN, STUDENT_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def parse_args(argv):
  flag_values = flags.FlagValues()
  flags.DEFINE_integer("image-size", 352, "output side of each view, pixels", flag_values=flag_values)
  flags.DEFINE_integer("num-images", 48, "JPEGs to make and time", flag_values=flag_values)
  flags.DEFINE_integer("workers", 0, "Grain worker processes for the pipeline run (0: skip)", flag_values=flag_values)
  flags.DEFINE_integer("batch-size", 16, "batch for the device half and the pipeline", flag_values=flag_values)
  flags.DEFINE_integer("repeats", 2, "timed passes per method; the best counts", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "seed of the paintings and the views", flag_values=flag_values)
  return cli.parse_command(argv, flag_values, __doc__)


def bench_config(image_size: int, on_device: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "image_size": image_size,
      "photometric_on_device": on_device,
      "views": {
          "student": {"mean": STUDENT_MEAN, "std": STUDENT_STD},
          "weak": {"mean": view_specs.IMAGENET_MEAN, "std": view_specs.IMAGENET_STD},
          "style": {"mean": STUDENT_MEAN, "std": STUDENT_STD},
      },
  })


def painting(rng: np.random.Generator) -> bytes:
  """A painting-like JPEG: a smooth colour field, a few hundred brush strokes, canvas grain."""
  width, height = (int(v) for v in rng.integers(500, 801, size=2))
  field = rng.integers(0, 256, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3), dtype=np.uint8)
  image = Image.fromarray(field).resize((width, height), Image.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(100, 400))):
    x, y = rng.integers(0, width), rng.integers(0, height)
    angle, length = rng.uniform(0, np.pi), rng.uniform(5, 60)
    end = (x + length * np.cos(angle), y + length * np.sin(angle))
    draw.line([(int(x), int(y)), (int(end[0]), int(end[1]))],
              fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(2, 9)))
  pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
  pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


# --- the plain PIL baseline ------------------------------------------------------------------


class PilThreeViews:
  """torchvision-style three views, every op in PIL (and NumPy for hue and normalisation)."""

  def __init__(self, image_size: int):
    self.size = image_size

  def _resized_crop(self, image, rng, scale):
    width, height = image.size
    for _ in range(10):
      area = width * height * rng.uniform(*scale)
      ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      w, h = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
      if 0 < w <= width and 0 < h <= height:
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        return image.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
    return image.resize((self.size, self.size), Image.BILINEAR)

  @staticmethod
  def _hue(image, shift):
    h, s, v = image.convert("HSV").split()
    hue = np.asarray(h, np.uint8) + np.uint8(int(round(shift * 255)) % 256)  # wraps around, as uint8
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")

  def _jitter(self, image, rng, brightness, contrast, saturation, hue):
    for op in rng.permutation(4):
      if op == 0 and brightness:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - brightness, 1 + brightness))
      elif op == 1 and contrast:
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - contrast, 1 + contrast))
      elif op == 2 and saturation:
        image = ImageEnhance.Color(image).enhance(rng.uniform(1 - saturation, 1 + saturation))
      elif op == 3 and hue:
        image = self._hue(image, rng.uniform(-hue, hue))
    return image

  @staticmethod
  def _to_normalised(image, mean, std):
    """ToTensor + Normalize: (3, S, S) float32, normalised in place as torchvision does."""
    x = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1), dtype=np.float32)
    x *= np.float32(1.0 / 255.0)
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    return x

  def __call__(self, image_bytes: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    student = self._resized_crop(image, rng, (0.2, 1.0))
    if rng.random() < 0.5:
      student = student.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.8:
      student = self._jitter(student, rng, 0.4, 0.4, 0.4, 0.1)
    if rng.random() < 0.2:
      student = student.convert("L").convert("RGB")
    if rng.random() < 0.5:
      student = student.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    weak = self._resized_crop(image, rng, (0.2, 1.0))
    if rng.random() < 0.5:
      weak = weak.transpose(Image.FLIP_LEFT_RIGHT)
    style = self._jitter(self._resized_crop(image, rng, (0.08, 1.0)), rng, 0.2, 0.2, 0.0, 0.0)
    return {"student": self._to_normalised(student, STUDENT_MEAN, STUDENT_STD),
            "weak": self._to_normalised(weak, view_specs.IMAGENET_MEAN, view_specs.IMAGENET_STD),
            "style": self._to_normalised(style, STUDENT_MEAN, STUDENT_STD)}


# --- timing ------------------------------------------------------------------------------------


def time_transform(transform, paths, seed: int, repeats: int) -> tuple[float, float, list]:
  """Best (CPU seconds, wall seconds) over `repeats` passes reading and transforming every file."""
  best_cpu, best_wall, outputs = float("inf"), float("inf"), []
  for _ in range(repeats):
    outputs = []
    cpu, wall = time.process_time(), time.perf_counter()
    for index, path in enumerate(paths):
      outputs.append(transform(path.read_bytes(), pipeline.example_rng(seed, 0, index)))
    best_cpu = min(best_cpu, time.process_time() - cpu)
    best_wall = min(best_wall, time.perf_counter() - wall)
  return best_cpu, best_wall, outputs


def time_device_half(outputs, config, batch_size: int, repeats: int) -> float:
  """Seconds per image of the jitted device photometric ops on batches of the split outputs."""
  keys = outputs[0].keys()
  batches = [{key: np.stack([o[key] for o in outputs[start:start + batch_size]]) for key in keys}
             for start in range(0, len(outputs) - batch_size + 1, batch_size)]
  if not batches:
    raise ValueError(f"--num-images {len(outputs)} must be at least --batch-size {batch_size}.")
  batches = [jax.device_put(b) for b in batches]
  step = jax.jit(lambda batch: photometric.device_photometric(batch, config))
  jax.block_until_ready(step(batches[0]))
  best = float("inf")
  for _ in range(max(repeats, 3)):
    start = time.perf_counter()
    jax.block_until_ready([step(b) for b in batches])
    best = min(best, time.perf_counter() - start)
  return best / (len(batches) * batch_size)


def time_pipeline(records, config, batch_size: int, workers: int, seed: int) -> float:
  """Wall-clock three-view images/s of the Grain training pipeline with `workers` processes."""
  dataset = pipeline.train_dataset(records, views.TrainViews(config), global_batch_size=batch_size, seed=seed,
                                   num_epochs=1, process_index=0, process_count=1, num_workers=workers,
                                   num_threads=1)
  iterator = iter(dataset)
  next(iterator)  # start-up (worker processes, imports) is not throughput
  start, count = time.perf_counter(), 0
  for batch in iterator:
    count += len(batch["index"])
  elapsed = time.perf_counter() - start
  iterator.close()
  return count / elapsed


def main(argv) -> int:
  args = parse_args(argv)
  rng = np.random.default_rng(args.seed)
  results = {"benchmark": "data", "image_size": args.image_size, "num_images": args.num_images,
             "cpu_count": os.cpu_count(), "device": str(jax.devices()[0].device_kind)}
  with tempfile.TemporaryDirectory(prefix="artstyle_bench_data_") as directory:
    paths = []
    for index in range(args.num_images):
      path = pathlib.Path(directory) / f"painting_{index:04d}.jpg"
      path.write_bytes(painting(rng))
      paths.append(path)
    sizes = [Image.open(p).size for p in paths]
    print(f"{len(paths)} JPEGs, {np.mean([w * h for w, h in sizes]) / 1e6:.2f} Mpixel on average, "
          f"{np.mean([p.stat().st_size for p in paths]) / 1e3:.0f} kB; views {args.image_size} px")

    host_config = bench_config(args.image_size, on_device=False)
    split_config = bench_config(args.image_size, on_device=True)
    methods = {"pil": PilThreeViews(args.image_size), "host": views.TrainViews(host_config),
               "split": views.TrainViews(split_config)}
    outputs = {}
    for name, transform in methods.items():
      cpu, wall, outputs[name] = time_transform(transform, paths, args.seed, args.repeats)
      results[f"{name}_images_per_cpu_s"] = round(len(paths) / cpu, 2)
      results[f"{name}_wall_s"] = round(wall, 3)
      print(f"{name:>6}: {len(paths) / cpu:7.1f} three-view images per CPU-second ({wall:.2f} s wall)")

    device_s = time_device_half(outputs["split"], split_config, args.batch_size, args.repeats)
    results["device_photometric_images_per_s"] = round(1.0 / device_s, 1)
    print(f"device half (jitted device_photometric on {results['device']}): {1.0 / device_s:.1f} images/s")
    results["host_speedup_vs_pil"] = round(results["host_images_per_cpu_s"] / results["pil_images_per_cpu_s"], 2)
    results["split_speedup_vs_pil"] = round(results["split_images_per_cpu_s"] / results["pil_images_per_cpu_s"], 2)
    print(f"per core vs the PIL baseline: host {results['host_speedup_vs_pil']}x, "
          f"split (host half) {results['split_speedup_vs_pil']}x")

    if args.workers > 0:
      records = [{"image": p.read_bytes(), "label": 0} for p in paths]
      for name, config in (("host", host_config), ("split", split_config)):
        rate = time_pipeline(records, config, args.batch_size, args.workers, args.seed)
        results[f"pipeline_{name}_images_per_s"] = round(rate, 1)
        print(f"Grain pipeline, {name} mode, {args.workers} workers: {rate:.1f} images/s wall")
      results["pipeline_workers"] = args.workers
  print(json.dumps(results))
  return 0
