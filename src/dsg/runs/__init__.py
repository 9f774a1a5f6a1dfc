"""Runs at scale: one job per SAE, executed locally or on Ray, and the sweep's summary."""
