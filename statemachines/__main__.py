"""Print every table's generated document: ``python -m statemachines > docs/states.md``.

``python -m statemachines --json`` prints the same tables as JSON instead (each table's
states, transitions and Mermaid diagram), for the Cockpit page's build (``cockpit/``).
"""

import json
import sys

from statemachines import TABLES, render_docs


def tables_json() -> dict:
    """Every table as JSON: what ``docs/states.md`` shows, for other renderers."""
    tables = []
    for table in TABLES:
        document = table.render_mermaid()
        diagram = document.split("```mermaid\n", 1)[1].split("```", 1)[0]
        tables.append({
            "name": table.name, "noun": table.noun, "title": table.title,
            "source": table.source, "initial": table.initial.value,
            "states": [{"value": s.value, "meaning": s.__doc__,
                        "terminal": s in table.terminal, "resting": s in table.resting,
                        "acts_outside": s in table.acts_outside} for s in table.states],
            "transitions": [{"trigger": t.trigger.value, "from": t.source.value,
                             "to": t.dest.value, "fired_by": t.fired_by}
                            for t in table.transitions],
            "mermaid": diagram,
        })
    return {"generated_by": "python -m statemachines --json", "tables": tables}


if sys.argv[1:] == ["--json"]:
    sys.stdout.write(json.dumps(tables_json(), indent=1) + "\n")
elif sys.argv[1:]:
    sys.exit("usage: python -m statemachines [--json]")
else:
    sys.stdout.write(render_docs())
