"""The steps of a run, each reading the artifacts of the one before: corpus, sparsity, select,
the gate's calibration, evaluation, attacks, export and generation."""
