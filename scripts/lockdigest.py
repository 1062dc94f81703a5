"""Print the digest of what the lock files are made from: pyproject.toml's dependencies.

scripts/lock.sh writes it into each lock file; scripts/bootstrap.sh compares it, so a
dependency added to pyproject.toml without re-locking stops the install with a clear
message instead of installing something unpinned. Only the fields that decide what gets
installed count (an edit to, say, the ruff settings does not make the lock stale).
"""

import hashlib
import json
import sys
import tomllib
from pathlib import Path

pyproject = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())
project = pyproject["project"]
inputs = {
    "requires-python": project.get("requires-python"),
    "dependencies": sorted(project.get("dependencies", [])),
    "optional-dependencies": {
        name: sorted(reqs) for name, reqs in project.get("optional-dependencies", {}).items()
    },
    "build-system": sorted(pyproject.get("build-system", {}).get("requires", [])),
}
print(hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest())
