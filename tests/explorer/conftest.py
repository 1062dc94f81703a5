"""The explorer tests reuse the API suite's per-engine app factory and the e2e suite's
Terraform shim (fixtures re-exported here)."""

from tests.api.conftest import engine, make_client  # noqa: F401 - fixtures
from tests.e2e.conftest import tf_env  # noqa: F401 - fixture
