"""`python -m ecs_harden` runs the command line."""

import sys

from ecs_harden.cli import main

sys.exit(main())
