"""``python -m energyprof`` runs the ``energyprof`` command."""
import sys

from .cli import main

sys.exit(main())
