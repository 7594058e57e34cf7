"""The retrieval sheet: per query image, its predicted styles and its closest gallery images."""
from collections.abc import Sequence
import os
from typing import NamedTuple

from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from artstyle_jax.pictures import figure

# A retrieval sheet's cell (one thumbnail and the text under it), and the band of its title.
SHEET_CELL_INCHES = (1.8, 2.6)
SHEET_TITLE_INCHES = 0.6
SHEET_THUMBNAIL_PX = 160
SHEET_MIN_COLUMNS = 4  # a sheet is at least this many cells wide, so that its title fits


class Match(NamedTuple):
  similarity: float  # cosine similarity to the query's features
  path: str
  class_name: str | None  # the gallery's class of the image, when it is a class-per-folder tree


class SheetRow(NamedTuple):
  """One query of a retrieval sheet."""
  query: str  # image path
  styles: list[tuple[float, str]]  # (probability, style), most probable first
  matches: list[Match]  # most similar first


def sheet_inches(num_rows: int, num_matches: int) -> tuple[float, float]:
  """(width, height) of a retrieval sheet: a cell per image (at least `SHEET_MIN_COLUMNS` across),
  a band for the title."""
  width, height = SHEET_CELL_INCHES
  return width * max(1 + num_matches, SHEET_MIN_COLUMNS), height * num_rows + SHEET_TITLE_INCHES


def _thumbnail(path: str) -> np.ndarray:
  """(h, w, 3) uint8 of the image, fitted inside SHEET_THUMBNAIL_PX square."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    image.thumbnail((SHEET_THUMBNAIL_PX, SHEET_THUMBNAIL_PX))
    return np.asarray(image)



def draw_retrieval_sheet(rows: Sequence[SheetRow], title: str, path: str | os.PathLike | None = None) -> Figure:
  """Under `title` (two lines fit), one row per query: the query, its predicted styles under it, then its matches in order as
  thumbnails, each with its rank, similarity, file name and class; saved at `path` when given.
  Size `sheet_inches(len(rows), most matches of a row)` times DPI: 180 px per image across (at
  least 720), 260 px per row plus 60 down.

  Each thumbnail's axes has the gid 'query/<path>' or 'match/<rank>/<path>', rank from 1.
  """
  num_matches = max((len(row.matches) for row in rows), default=0)
  width, height = sheet_inches(len(rows), num_matches)
  fig = figure.new_figure((width, height))
  cell_w, cell_h = SHEET_CELL_INCHES
  image_side = 0.85 * cell_w  # inches; the rest of the cell's height holds its text

  def cell_axes(row, column, gid):
    left = (column * cell_w + (cell_w - image_side) / 2) / width
    bottom = (height - SHEET_TITLE_INCHES - row * cell_h - 0.25 - image_side) / height
    ax = fig.add_axes((left, bottom, image_side / width, image_side / height), gid=gid)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax

  for r, row in enumerate(rows):
    ax = cell_axes(r, 0, f"query/{row.query}")
    ax.imshow(_thumbnail(row.query))
    for spine in ax.spines.values():
      spine.set_color("black")
      spine.set_linewidth(2)
    ax.set_title(figure.shorten(os.path.basename(row.query)), fontsize=7, fontweight="bold")
    styles = "\n".join(f"{p:.3f}  {figure.shorten(name, 18)}" for p, name in row.styles)
    ax.text(0.5, -0.04, styles, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    for rank, match in enumerate(row.matches, start=1):
      ax = cell_axes(r, rank, f"match/{rank}/{match.path}")
      ax.imshow(_thumbnail(match.path))
      ax.set_title(f"#{rank}  similarity {match.similarity:.3f}", fontsize=7)
      caption = figure.shorten(os.path.basename(match.path))
      if match.class_name is not None:
        caption += f"\nclass: {figure.shorten(match.class_name, 18)}"
      ax.text(0.5, -0.04, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7)
  fig.suptitle(title, y=1.0 - 0.1 / height, va="top", fontsize=9)
  if path is not None:
    figure.save_png(fig, path)
  return fig


def folder_classes(root: str, paths: Sequence[str]) -> list[str | None]:
  """The class of each path in a class-per-folder tree at `root`: its first folder under root.
  All None when some path lies directly in root (not a class-per-folder tree)."""
  parts = [os.path.relpath(path, root).split(os.sep) for path in paths]
  if any(len(p) < 2 for p in parts):
    return [None] * len(paths)
  return [p[0] for p in parts]

