"""What runs a model: the session (settings, registry, case, lazily loaded model and SAE) and
the model backends the stages score through."""
