"""``python -m mixgf`` runs the command line."""

from mixgf._cli import main

raise SystemExit(main())
