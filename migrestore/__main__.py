"""``python -m migrestore`` runs the command line."""

from migrestore.cli import run

raise SystemExit(run())
