"""What a run keeps on disk or in a bucket: paths as users type them (`paths`), Orbax
checkpoints and their damage (`checkpoints`, `restore_tasks`), what a failed read or write says
(`failures`), and the metric logs (`metric_writer`).

Imports `runtime` and `data` (a checkpoint holds the input pipeline's position)."""
