"""The evaluation stage: question subsets, the unguarded baseline, every configuration's
scores, and the report."""
