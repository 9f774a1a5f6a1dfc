"""``dsg train-sae``: a sparse autoencoder on a model's residual stream, for a model that has
none. ``stage.py`` runs it (activations, training with checkpoints, the final folder);
``sae_math.py`` holds the two architectures, ``measure.py`` the held-out metrics and the curve,
``export.py`` the sae_lens folder. See docs/train-sae.md."""
