"""Test set-up: no network, and no cache of the user's written (datasets caches what it reads)."""

import os
import tempfile

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="dsg-open-unlearning-datasets-")
