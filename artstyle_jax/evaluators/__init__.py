"""Evaluating frozen features: weighted kNN (`knn`), linear probes (`linear_probe`),
classification metrics (`metrics`) and their table, JSON and plot (`report`)."""
