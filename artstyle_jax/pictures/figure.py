"""What the pictures share: their resolution, a new figure, the PNG written whole, title parts."""
import io
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from artstyle_jax.storage import paths

DPI = 100


def save_png(fig: Figure, path: str | os.PathLike) -> None:
  """Writes the figure as a PNG at `path` (local or gs://...), atomically (`paths.write_atomically`)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  paths.write_atomically(path, buffer.getvalue())


def new_figure(inches: tuple[float, float]) -> Figure:
  """A figure of (width, height) inches on the Agg canvas, `DPI` dots per inch."""
  fig = Figure(figsize=inches, dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def shorten(name: str, width: int = 24) -> str:
  """`name`, or its last `width` - 3 characters after "..." when it is longer."""
  return name if len(name) <= width else "..." + name[-(width - 3):]


def describe_step(step: int | None) -> str:
  """'step N', or 'random init' for the untrained backbone (step None or -1)."""
  return "random init" if step is None or step < 0 else f"step {step}"

