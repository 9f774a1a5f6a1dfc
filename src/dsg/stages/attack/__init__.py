"""Stress tests of a guardrail: attack plugins' conditions and relearning, scored by the
evaluation engine."""
