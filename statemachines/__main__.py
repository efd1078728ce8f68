"""Print the generated state diagram: ``python -m statemachines > docs/states.md``."""

import sys

from statemachines.provisioning import render_mermaid

sys.stdout.write(render_mermaid())
