"""The open-unlearning model handler: :mod:`dsg_runtime.open_unlearning`, at the path dsg has
always offered it.

An alias module, one line per name: each is the runtime's own object. dsg's own code imports
:mod:`dsg_runtime.open_unlearning`; this path is for users.
"""

from dsg_runtime.open_unlearning import BUNDLE_KWARG as BUNDLE_KWARG
from dsg_runtime.open_unlearning import BUNDLE_SUBDIR as BUNDLE_SUBDIR
from dsg_runtime.open_unlearning import GuardedModel as GuardedModel
