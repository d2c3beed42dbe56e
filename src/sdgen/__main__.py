"""``python -m sdgen``: the same as the ``sdgen`` command."""

import sys

from sdgen.cli import main

sys.exit(main())
