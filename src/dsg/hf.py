"""The guardrail on a Hugging Face ``transformers`` causal LM: :mod:`dsg_runtime.hf`, at the path
dsg has always offered it.

An alias module, one line per name: each is the runtime's own object, so ``dsg.hf.attach is
dsg_runtime.hf.attach``. dsg's own code imports :mod:`dsg_runtime.hf`; this path is for users.
"""

from dsg_runtime.hf import GuardrailHandle as GuardrailHandle
from dsg_runtime.hf import GuardrailStateError as GuardrailStateError
from dsg_runtime.hf import attach as attach
from dsg_runtime.hf import cache_length as cache_length
from dsg_runtime.hf import decoder_layers as decoder_layers
from dsg_runtime.hf import decoder_of as decoder_of
