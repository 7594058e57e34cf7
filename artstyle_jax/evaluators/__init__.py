"""Evaluating frozen features, algorithms only: weighted kNN (`knn`), linear probes (`linear_probe`,
`probes`), few-label settings (`label_efficiency`), retrieval (`retrieval`), classification
metrics (`metrics`) and their table and JSON (`report`).

Imports `method`, `models`, `data`, `storage` and `runtime`; never `runs` or `pictures`."""
