"""Art-style data: dataset builders, sources, synthetic data, views and the input pipeline.

  images      robust reading of image files when a dataset is built (bad-data policy)
  builders/   TFDS builders (WikiArt, Pandora18k, Flickr Style, class-per-folder trees)
              writing ArrayRecord, without TensorFlow
  sources     a built split as a random-access source for Grain, plus label names
  synthetic   a procedural art-style dataset: the demo's and the tests' embedded data
  view_specs  what each view is and the random draws that make one (crop, flip, jitter, ...)
  geometry    host decoding, crop boxes and resized crops (PIL)
  photometric jitter, grayscale, blur and normalisation, on the host or in the jitted step
  views       the transforms: the three training views, the probe and evaluation views
  pipeline    the Grain input pipeline

Submodules are imported explicitly; this package imports nothing, so that loading one
part does not pay for the others (TFDS takes seconds to import). Imports no other room (its
programs, `python -m artstyle_jax.data.builders` and `.data.synthetic`, aside).
"""
