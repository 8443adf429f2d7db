"""Brings workflows/*.json up to the nodes' current inputs (as opening and saving them in the frontend
would): inputs added since they were saved get their defaults, values and socket types of earlier
versions become the current ones (harness.migrate_workflows). tests/test_workflows.py fails while a
shipped workflow is out of date. Run:

    source "$(bash .ci/setup.sh)" && "$MARIONETTE_VENV/bin/python" .ci/sync_workflows.py
"""
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import harness  # noqa: E402,F401  (registers the `marionette` library alias)
from harness.comfy_host import ComfyHost  # noqa: E402
from harness.migrate_workflows import migrate  # noqa: E402
from harness.workflow import add_missing_widgets  # noqa: E402


def main() -> None:
    os.environ.pop("MARIONETTE_TEST_MODELS", None)  # the choices a user sees
    classes = ComfyHost.get().nodes.NODE_CLASS_MAPPINGS
    for path in sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json"))):
        with open(path) as f:
            workflow = json.load(f)
        changes = add_missing_widgets(workflow, classes) + [str(c) for c in migrate(workflow, classes)]
        if changes:
            with open(path, "w") as f:
                f.write(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n")
        print(os.path.basename(path), "; ".join(changes) or "up to date")


if __name__ == "__main__":
    main()
