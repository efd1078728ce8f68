"""Print every table's generated document: ``python -m statemachines > docs/states.md``."""

import sys

from statemachines import render_docs

sys.stdout.write(render_docs())
