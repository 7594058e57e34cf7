"""Command-line tools around training: importing checkpoints of the authors' PyTorch code."""
