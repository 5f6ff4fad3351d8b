import os
import sys

# Tests run in parallel workers (pytest -n 2) on small tensors: one intra-op thread per worker avoids
# oversubscribing the cores, which costs far more than it gains at these sizes. Set before torch loads;
# subprocesses started by tests inherit it. An explicit setting in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests import the project packages from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
