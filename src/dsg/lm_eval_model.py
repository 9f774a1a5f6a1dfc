"""The ``dsg`` lm-evaluation-harness model type: :mod:`dsg_runtime.lm_eval_model`, at the path dsg
has always offered it (importing either registers the type; ``python -m dsg.lm_eval_model`` runs
``dsg-lm-eval``).

An alias module, one line per name: each is the runtime's own object. dsg's own code imports
:mod:`dsg_runtime.lm_eval_model`; this path is for users.
"""

from dsg_runtime.lm_eval_model import MODEL_NAME as MODEL_NAME
from dsg_runtime.lm_eval_model import PAD_ID as PAD_ID
from dsg_runtime.lm_eval_model import GuardedLM as GuardedLM
from dsg_runtime.lm_eval_model import context_lengths as context_lengths
from dsg_runtime.lm_eval_model import main as main
from dsg_runtime.lm_eval_model import row_masks as row_masks

if __name__ == "__main__":
    main()
