"""`python -m pftls_hook` is the same as the `pftls-hook` command."""

import sys

from pftls_hook.cli import main

sys.exit(main())
