"""`python -m tests.server_app [server options]`: the real server entry (serve_main) wired as main.py
wires it, with the plain-Python test nodes instead of the built-in ones, for subprocess tests (kill -9)."""
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.app import serve_main  # noqa: E402
from tests.server_nodes import make_registry  # noqa: E402
from wiring import server_setup  # noqa: E402

if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:], functools.partial(server_setup, registry_factory=make_registry)))
