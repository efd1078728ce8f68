"""``python -m daemon.cli``: provctl."""

import sys

from daemon.cli import main

sys.exit(main())
