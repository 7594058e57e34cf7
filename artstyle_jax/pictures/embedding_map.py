"""A 2-D t-SNE map of features, one colour per class (embedding.png of an evaluation)."""
from collections.abc import Sequence
import os

from matplotlib.figure import Figure
import numpy as np

from artstyle_jax.pictures import figure

EMBEDDING_FILE = "embedding.png"
EMBEDDING_INCHES = (10.0, 7.0)  # 1000 x 700 px
MIN_EMBEDDING_POINTS = 3  # t-SNE's perplexity must stay below the number of points


def tsne_coordinates(features: np.ndarray, seed: int = 0) -> np.ndarray:
  """(N, 2) t-SNE map of (N, C) features, L2-normalised first (so distances rank as the kNN's
  cosine similarities do); deterministic for a seed. Perplexity 30, or (N - 1) / 3 when N is small."""
  from sklearn.manifold import TSNE  # imported here: scikit-learn takes seconds to import
  import threadpoolctl

  features = np.asarray(features, np.float64)
  if len(features) < MIN_EMBEDDING_POINTS:
    raise ValueError(f"a t-SNE map needs at least {MIN_EMBEDDING_POINTS} points, got {len(features)}")
  features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  tsne = TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca", random_state=seed)
  # One OpenMP thread: beside other busy threads (JAX's, another job's) scikit-learn's threads
  # spin-wait on one another (45 points: 20 s on two threads of a loaded 2-core machine, 0.3 s on
  # one), and the Barnes-Hut sums come out in the same order on every machine.
  with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    return tsne.fit_transform(features)


def _class_colours(num_classes: int) -> list:
  from matplotlib import colormaps

  if num_classes <= 10:
    return [colormaps["tab10"](i) for i in range(num_classes)]
  if num_classes <= 20:
    return [colormaps["tab20"](i) for i in range(num_classes)]
  return [colormaps["turbo"](i / (num_classes - 1)) for i in range(num_classes)]


def draw_embedding(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str,
                   path: str | os.PathLike | None = None, *, seed: int = 0) -> Figure:
  """A 2-D t-SNE map (`tsne_coordinates`) of (N, C) features, one colour per class of the (N,) int
  labels, with a legend of `class_names`; saved as a PNG at `path` when given. 1000 x 700 px.

  Each class is one scatter (gid 'class/<name>') whose offsets are its points' coordinates.
  """
  labels = np.asarray(labels)
  coordinates = tsne_coordinates(features, seed)
  fig = figure.new_figure(EMBEDDING_INCHES)
  ax = fig.add_subplot()
  point_size = float(np.clip(8000 / len(labels), 6, 40))  # in points^2: a few large dots, many small ones
  for index, (name, colour) in enumerate(zip(class_names, _class_colours(len(class_names)))):
    members = labels == index
    if members.any():
      ax.scatter(coordinates[members, 0], coordinates[members, 1], s=point_size, color=colour, label=name,
                 gid=f"class/{name}", alpha=0.8, linewidths=0)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(f"{title}\nt-SNE of the pooled features, n = {len(labels)}", fontsize=11)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=1.5,
            ncol=1 if len(class_names) <= 25 else 2, title="class")
  fig.tight_layout()
  if path is not None:
    figure.save_png(fig, path)
  return fig

