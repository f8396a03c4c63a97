"""``python -m mixgf`` runs the command line."""

from mixgf.cli import main

raise SystemExit(main())
