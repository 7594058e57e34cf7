"""What a program does to a workdir: pretraining (`pretraining`), fine-tuning, evaluation and its
head file, prediction, comparison, the synthetic demo, a saved run's reads (`saved_run`), the
import of the authors' checkpoints (`authors_import`) and the export of a backbone with its model
card (`exporting`, `model_card`).

Imports every room below it; only the programs import it."""
