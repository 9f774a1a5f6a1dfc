"""The ``dsg`` lm-evaluation-harness model type: :mod:`dsg_runtime.lm_eval_model`, at the path dsg
has always offered it (importing either registers the type)."""

from dsg_runtime.lm_eval_model import (
    MODEL_NAME,
    PAD_ID,
    GuardedLM,
    context_lengths,
    main,
    row_masks,
)

__all__ = ["MODEL_NAME", "PAD_ID", "GuardedLM", "context_lengths", "main", "row_masks"]

if __name__ == "__main__":
    main()
