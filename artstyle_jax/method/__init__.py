"""The paper's mathematics: the config's hyper-parameters (`config_lib`), the losses, the train
state and its sharding, the self-supervised and the supervised steps, the optimiser, the pooled
features and the health signals of a batch.

Imports `models`, `data`, `storage` and `runtime`; never `evaluators`, `pictures` or `runs`."""
