"""``python -m daemon.cli``: provctl."""

import sys

from daemon.cli.commands import main

sys.exit(main())
