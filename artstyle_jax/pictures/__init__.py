"""The pictures, one module each, all drawn alike (`figure`):

- `curves`: the training curves of one or more runs (curves.png, redrawn by training);
- `embedding_map`: a 2-D t-SNE map of an evaluation's test features (embedding.png);
- `confusion`: the confusion matrix of one evaluation (<method>_confusion.png);
- `retrieval_sheet`: images with their predicted styles and closest gallery images (predict's --sheet);
- `comparison_chart`: the kNN and linear probe top-1 of every row of a comparison (comparison.png).
- `label_efficiency_chart`: accuracy against labels per class, a line per row of a comparison
  (label_efficiency.png).

Every picture is drawn on a bare `matplotlib.figure.Figure` with the Agg canvas (no display,
matplotlib's global backend left alone), carries a title naming the model, the step and the
dataset, and is saved as a PNG of `figure.DPI` dots per inch, so that its size in pixels is its
size in inches times `DPI`, as each drawing function states. The drawing functions return the
Figure, whose artists keep what was drawn (lines, scatter offsets, images) for a reader or a test.

Imports `storage` (the runs' files it draws from) and the rooms below it; nothing above.
"""
