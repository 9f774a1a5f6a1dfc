"""MCQ scoring engines: the model split at the SAE's hook, answering questions unguarded and under
each guardrail in one pass (``letter``: P(A..D) at the last token; ``loglik``: each choice's
log-likelihood after the question)."""
