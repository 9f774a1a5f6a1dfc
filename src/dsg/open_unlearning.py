"""The open-unlearning model handler: :mod:`dsg_runtime.open_unlearning`, at the path dsg has
always offered it."""

from dsg_runtime.open_unlearning import BUNDLE_KWARG, BUNDLE_SUBDIR, GuardedModel

__all__ = ["BUNDLE_KWARG", "BUNDLE_SUBDIR", "GuardedModel"]
