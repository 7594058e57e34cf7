"""The views (view_specs, geometry, photometric, views): torchvision sampling semantics, each op
against PIL / NumPy, host form == device form."""
import colorsys
import io

import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageFilter
import pytest
from scipy import ndimage

from artstyle_jax.data import geometry
from artstyle_jax.data import photometric
from artstyle_jax.data import view_specs
from artstyle_jax.data import views

STUDENT_MEAN, STUDENT_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
LEVEL = 1.0 / 255.0


def make_config(image_size=32, on_device=False):
  return ml_collections.ConfigDict({
      "image_size": image_size,
      "photometric_on_device": on_device,
      "views": {
          "student": {"mean": STUDENT_MEAN, "std": STUDENT_STD},
          "weak": {"mean": view_specs.IMAGENET_MEAN, "std": view_specs.IMAGENET_STD},
          "style": {"mean": STUDENT_MEAN, "std": STUDENT_STD},
      },
  })


def textured_rgb(rng, width, height, noise=12.0):
  """A smooth random colour field plus grain: enough structure for every op to act."""
  coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
  return np.clip(smooth + rng.normal(0, noise, smooth.shape), 0, 255).astype(np.uint8)


def encode(pixels, fmt="JPEG", mode=None):
  image = Image.fromarray(pixels)
  if mode is not None:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def as_float(pixels):
  return pixels.astype(np.float32) / 255.0


def planar(x):
  """(H, W, 3) -> (3, H, W), the layout of the photometric ops."""
  return np.ascontiguousarray(x.transpose(2, 0, 1))


def interleaved(x):
  return np.asarray(x).transpose(1, 2, 0)


# --- sampling ---------------------------------------------------------------------------------


def test_random_resized_crop_stays_in_bounds_with_scale_and_ratio_in_range():
  rng = np.random.default_rng(0)
  for _ in range(2000):
    width, height = int(rng.integers(40, 400)), int(rng.integers(40, 400))
    top, left, h, w = view_specs.sample_crop(rng, width, height, (0.08, 1.0))
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    # w and h are rounded to whole pixels, which moves area and ratio by up to a pixel's worth.
    slack_area = (w + h + 1) / (width * height)
    assert 0.08 - slack_area <= w * h / (width * height) <= 1.0 + slack_area
    assert 3 / 4 * (1 - 1.5 / h) <= w / h <= 4 / 3 * (1 + 1.5 / min(h, w))


def test_random_resized_crop_fallback_is_the_central_crop_clamped_to_the_ratio_range():
  rng = np.random.default_rng(0)
  impossible = (2.0, 3.0)  # no crop can cover twice the image: all 10 tries fail
  assert view_specs.sample_crop(rng, 300, 100, impossible) == (0, 83, 100, 133)  # wide: h = H, w = round(4/3 H)
  assert view_specs.sample_crop(rng, 100, 300, impossible) == (83, 0, 133, 100)  # tall: w = W, h = round(W / (3/4))
  assert view_specs.sample_crop(rng, 120, 100, impossible) == (0, 0, 100, 120)  # ratio in range: whole image


def test_sampled_frequencies_and_ranges_follow_the_method():
  specs = view_specs.view_specs(make_config())
  rng = np.random.default_rng(1)
  draws = {view: [view_specs.sample_view_params(rng, spec, 200, 150) for _ in range(3000)]
           for view, spec in specs.items()}
  student = draws["student"]
  assert np.mean([p.flip for p in student]) == pytest.approx(0.5, abs=0.04)
  assert np.mean([p.jitter_apply for p in student]) == pytest.approx(0.8, abs=0.03)
  assert np.mean([p.gray for p in student]) == pytest.approx(0.2, abs=0.03)
  sigmas = np.array([p.blur_sigma for p in student])
  assert np.mean(sigmas > 0) == pytest.approx(0.5, abs=0.04)
  assert sigmas[sigmas > 0].min() >= 0.1 and sigmas.max() <= 2.0
  factors = np.stack([p.jitter_factors for p in student])
  for i, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
    assert low <= factors[:, i].min() < low + 0.01 and high - 0.01 < factors[:, i].max() <= high
  orders = np.stack([p.jitter_order for p in student])
  assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
  assert len({tuple(o) for o in orders}) == 24  # every order of the four ops occurs

  style = draws["style"]
  assert all(p.jitter_apply and not p.flip and not p.gray and p.blur_sigma == 0 for p in style)
  style_factors = np.stack([p.jitter_factors for p in style])
  assert style_factors[:, :2].min() >= 0.8 and style_factors[:, :2].max() <= 1.2
  np.testing.assert_array_equal(style_factors[:, 2:], [[1.0, 0.0]] * len(style))
  assert min(p.crop[2] * p.crop[3] for p in style) < 0.2 * 200 * 150 * 0.5  # scale reaches down to 0.08

  weak = draws["weak"]
  assert not any(p.jitter_apply or p.gray or p.blur_sigma for p in weak)
  assert np.mean([p.flip for p in weak]) == pytest.approx(0.5, abs=0.04)
  assert min(p.crop[2] * p.crop[3] for p in weak) >= 0.2 * 200 * 150 - 200 - 150


def test_view_constants_come_from_the_config_and_bad_ones_are_rejected():
  specs = view_specs.view_specs(make_config())
  assert specs["weak"].mean == view_specs.IMAGENET_MEAN and specs["student"].std == STUDENT_STD
  config = make_config()
  config.views.style.std = (0.2, 0.0, 0.2)
  with pytest.raises(ValueError, match="style.std must be positive"):
    view_specs.view_specs(config)


# --- geometry ----------------------------------------------------------------------------------


def test_resized_crop_matches_pil_crop_then_resize_except_on_the_outer_pixels():
  rng = np.random.default_rng(2)
  image = Image.fromarray(textured_rgb(rng, 120, 90))
  for crop in [(10, 20, 60, 70), (5, 5, 20, 24), (0, 0, 90, 120)]:  # downscale, upscale, whole image
    top, left, h, w = crop
    ours = geometry.resized_crop(image, image.size, crop, 32)
    reference = np.asarray(image.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(ours[1:-1, 1:-1], reference[1:-1, 1:-1])
    flipped = geometry.resized_crop(image, image.size, crop, 32, flip=True)
    np.testing.assert_array_equal(flipped, ours[:, ::-1])


def test_jpeg_draft_decoding_is_used_for_large_sources_and_stays_within_a_grey_level_on_average():
  rng = np.random.default_rng(3)
  data = encode(textured_rgb(rng, 560, 480))
  full = views.TrainViews(make_config(16, on_device=True), draft=False)
  drafted = views.TrainViews(make_config(16, on_device=True))
  factors = []
  for seed in range(16):
    crops = [view_specs.sample_view_params(np.random.default_rng(seed), spec, 560, 480).crop
             for spec in drafted.specs.values()]
    factors.append(geometry.draft_factor(geometry.open_image(data), crops, 16))
    reference, ours = full(data, np.random.default_rng(seed)), drafted(data, np.random.default_rng(seed))
    for view in view_specs.VIEW_NAMES:
      difference = np.abs(reference[view].astype(int) - ours[view].astype(int))
      assert difference.mean() < 1.0 and difference.max() <= 6
  assert max(factors) >= 2


def test_non_rgb_sources_give_three_channel_views():
  rng = np.random.default_rng(4)
  pixels = textured_rgb(rng, 64, 48)
  transform = views.TrainViews(make_config(16, on_device=True))
  for data in [encode(pixels, mode="L"), encode(pixels, "PNG", mode="P"), encode(pixels, "PNG", mode="RGBA")]:
    out = transform(data, np.random.default_rng(0))
    assert out["weak"].shape == (16, 16, 3) and out["weak"].dtype == np.uint8


def test_eval_view_is_torchvision_resize_then_centre_crop_with_student_normalisation():
  assert geometry.eval_geometry(500, 400, 352) == ((502, 402), (25, 75, 352, 352))
  assert geometry.eval_geometry(300, 600, 352) == ((402, 804), (226, 25, 352, 352))
  rng = np.random.default_rng(5)
  pixels = textured_rgb(rng, 100, 70)
  transform = views.EvalView(24, STUDENT_MEAN, STUDENT_STD, crop_fraction=0.75)
  ours = transform(encode(pixels, "PNG"))["image"]
  # Reference: Resize(32) -> shorter side 32, longer int(32 * 100 / 70) = 45; CenterCrop(24).
  reference = np.asarray(Image.fromarray(pixels).resize((45, 32), Image.BILINEAR).crop((10, 4, 34, 28)))
  ours = ours * np.float32(STUDENT_STD) + np.float32(STUDENT_MEAN)
  reference = as_float(reference)
  # Same pixels up to the last bit of PIL's filter coefficients (a few pixels one level apart).
  np.testing.assert_allclose(ours, reference, atol=LEVEL + 1e-6)
  assert np.mean(np.abs(ours - reference) < 1e-5) > 0.99


def test_probe_train_view_is_a_random_resized_crop_with_flip():
  rng = np.random.default_rng(6)
  data = encode(textured_rgb(rng, 80, 60), "PNG")
  transform = views.ProbeTrainView(16, STUDENT_MEAN, STUDENT_STD)
  params = view_specs.sample_view_params(np.random.default_rng(9), transform.spec, 80, 60)
  top, left, h, w = params.crop
  reference = np.asarray(Image.open(io.BytesIO(data)).crop((left, top, left + w, top + h)).resize(
      (16, 16), Image.BILINEAR))
  reference = reference[:, ::-1] if params.flip else reference
  ours = transform(data, np.random.default_rng(9))["image"] * np.float32(STUDENT_STD) + np.float32(STUDENT_MEAN)
  np.testing.assert_allclose(ours[1:-1, 1:-1], as_float(reference)[1:-1, 1:-1], atol=1e-5)


# --- photometric ops against PIL / NumPy ---------------------------------------------------------


@pytest.fixture(name="pixels")
def fixture_pixels():
  return textured_rgb(np.random.default_rng(7), 40, 32, noise=30.0)


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_brightness_contrast_saturation_match_pil_image_enhance(pixels, factor):
  image = Image.fromarray(pixels)
  x = as_float(pixels)
  for ours, enhancer, tolerance in [(photometric.adjust_brightness, ImageEnhance.Brightness, 1),
                                    (photometric.adjust_contrast, ImageEnhance.Contrast, 1.5),
                                    (photometric.adjust_saturation, ImageEnhance.Color, 2)]:
    # PIL rounds to whole levels (and its contrast mean / saturation gray) on the way.
    reference = as_float(np.asarray(enhancer(image).enhance(factor)))
    np.testing.assert_allclose(interleaved(ours(planar(x), factor)), reference, atol=tolerance * LEVEL + 1e-6)


@pytest.mark.parametrize("shift", [-0.1, 0.03, 0.5])
def test_hue_matches_colorsys_hsv_rotation(pixels, shift):
  x = as_float(pixels)
  expected = np.empty(x.shape, np.float64)
  for index in np.ndindex(x.shape[:2]):
    h, s, v = colorsys.rgb_to_hsv(*x[index].astype(np.float64))
    expected[index] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  np.testing.assert_allclose(interleaved(photometric.adjust_hue(planar(x), shift)), expected, atol=2e-6)


def test_hue_leaves_grays_and_a_full_turn_unchanged(pixels):
  gray = np.repeat(planar(as_float(pixels))[:1], 3, axis=0)
  np.testing.assert_allclose(photometric.adjust_hue(gray, 0.3), gray, atol=1e-7)
  x = planar(as_float(pixels))
  np.testing.assert_allclose(photometric.adjust_hue(x, 1.0), x, atol=2e-6)


def test_grayscale_matches_pil_luma_conversion(pixels):
  reference = as_float(np.asarray(Image.fromarray(pixels).convert("L")))
  ours = interleaved(photometric.grayscale(planar(as_float(pixels))))
  assert ours.shape == pixels.shape
  np.testing.assert_allclose(ours, np.repeat(reference[..., None], 3, axis=-1), atol=0.5 * LEVEL + 1e-6)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_is_a_truncated_gaussian_with_replicated_edges(pixels, sigma):
  x = as_float(pixels)
  expected = ndimage.gaussian_filter(x.astype(np.float64), sigma=(sigma, sigma, 0), mode="nearest",
                                     truncate=photometric.BLUR_RADIUS / sigma)
  np.testing.assert_allclose(interleaved(photometric.gaussian_blur(planar(x), sigma)), expected, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_agrees_with_the_references_pil_gaussian_blur_on_average(pixels, sigma):
  reference = as_float(np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=sigma))))
  difference = np.abs(interleaved(photometric.gaussian_blur(planar(as_float(pixels)), sigma)) - reference)
  assert difference.mean() < 1.0 * LEVEL


def test_host_photometric_applies_ops_in_the_sampled_order(pixels):
  spec = view_specs.view_specs(make_config())["student"]
  order = np.array([3, 1, 0, 2], np.int32)
  factors = np.array([1.3, 0.7, 1.2, 0.08], np.float32)
  params = view_specs.ViewParams(crop=(0, 0, 1, 1), flip=False, jitter_apply=True, jitter_order=order,
                            jitter_factors=factors, gray=False, blur_sigma=0.0)
  x = planar(as_float(pixels))
  expected = interleaved(photometric.adjust_saturation(photometric.adjust_brightness(photometric.adjust_contrast(
      photometric.adjust_hue(x, factors[3]), factors[1]), factors[0]), factors[2]))
  ours = photometric.host_photometric(pixels, params, spec) * np.float32(STUDENT_STD) + np.float32(STUDENT_MEAN)
  np.testing.assert_allclose(ours, expected, atol=1e-5)


# --- host form == device form ------------------------------------------------------------------


def _directed_batch(rng, spec, view, count, size):
  """Images and parameters covering every op, order, flag and both blur states."""
  images, params = [], []
  for i in range(count):
    factors = np.array([rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4),
                        rng.uniform(-0.1, 0.1)], np.float32)
    if view == "style":
      factors[2:] = (1.0, 0.0)
    params.append(view_specs.ViewParams(crop=(0, 0, size, size), flip=False, jitter_apply=i % 4 != 3,
                                   jitter_order=rng.permutation(4).astype(np.int32), jitter_factors=factors,
                                   gray=spec.gray_p > 0 and i % 3 == 1,
                                   blur_sigma=float(rng.uniform(0.1, 2.0)) if spec.blur_p > 0 and i % 2 else 0.0))
    images.append(textured_rgb(rng, size, size, noise=20.0))
  return images, params


def test_device_photometric_equals_host_photometric_within_one_level():
  config = make_config()
  specs = view_specs.view_specs(config)
  rng = np.random.default_rng(8)
  batch, expected = {}, {}
  for view, spec in specs.items():
    images, params = _directed_batch(rng, spec, view, 12, 24)
    batch[view] = np.stack(images)
    for key in photometric.param_keys(view, spec):
      batch[key] = np.stack([photometric.param_arrays(view, spec, p)[key] for p in params])
    expected[view] = np.stack([photometric.host_photometric(img, p, spec) for img, p in zip(images, params)])
  batch["label"] = np.arange(12, dtype=np.int32)
  out = jax.jit(lambda b: photometric.device_photometric(b, config))(batch)
  assert set(out) == {"student", "weak", "style", "label"}
  np.testing.assert_array_equal(out["label"], batch["label"])
  for view, spec in specs.items():
    assert out[view].dtype == np.float32
    np.testing.assert_allclose(np.asarray(out[view]) * np.float32(spec.std), expected[view] * np.float32(spec.std),
                               atol=LEVEL)


def test_train_views_host_mode_equals_device_mode_for_the_same_generator():
  rng = np.random.default_rng(10)
  images = [encode(textured_rgb(rng, 90, 70)) for _ in range(6)]
  host = views.TrainViews(make_config(24))
  device = views.TrainViews(make_config(24, on_device=True))
  host_out = [host(data, np.random.default_rng((3, i))) for i, data in enumerate(images)]
  device_out = [device(data, np.random.default_rng((3, i))) for i, data in enumerate(images)]
  assert all(host_out[0][v].dtype == np.float32 and device_out[0][v].dtype == np.uint8 for v in view_specs.VIEW_NAMES)
  batch = {key: np.stack([d[key] for d in device_out]) for key in device_out[0]}
  out = photometric.device_photometric(batch, make_config(24))
  for view, spec in view_specs.view_specs(make_config()).items():
    host_batch = np.stack([h[view] for h in host_out])
    np.testing.assert_allclose(np.asarray(out[view]) * np.float32(spec.std), host_batch * np.float32(spec.std),
                               atol=LEVEL)
  again = host(images[0], np.random.default_rng((3, 0)))
  for view in view_specs.VIEW_NAMES:
    np.testing.assert_array_equal(again[view], host_out[0][view])
