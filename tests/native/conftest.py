import importlib
import os
import sys
import warnings

# tests.oracle is imported as a package from the repository root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# kafka-python 3.0 uses importlib.resources.read_text at import time, which is
# deprecated (and pytest turns warnings into errors): import it once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    for name in ("kafka.partitioner.default", "kafka.record.default_records",
                 "kafka.record.memory_records"):
        importlib.import_module(name)
