"""`python -m companions.demo`: see companions/demo/__init__.py."""

import sys

from companions.demo.cli import main

sys.exit(main())
