"""``python -m migrestore`` runs the command line."""

from migrestore.cli import main

raise SystemExit(main())
