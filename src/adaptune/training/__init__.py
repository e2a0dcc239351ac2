"""The application layer: datasets, tasks, the training run (loop, checkpoints, distributed), evaluation,
reports, experiments (compare / sweep) and the built-in assets. Built on formats, methods and core."""
