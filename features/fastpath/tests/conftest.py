"""The fast path's integration tests use the shared harness and fixtures of tests/integration:
its conftest is loaded here under another module name and its fixtures and hooks re-exported."""
import importlib.util
import os
import sys

_INTEGRATION = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                            "..", "tests", "integration"))
sys.path.insert(0, _INTEGRATION)

_spec = importlib.util.spec_from_file_location("meshlane_integration_conftest",
                                               os.path.join(_INTEGRATION, "conftest.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)
globals().update({k: v for k, v in vars(_shared).items() if not k.startswith("__")})
