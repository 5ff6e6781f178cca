"""``python -m migrestore.simulator`` runs ``migrestore-sim``."""

from migrestore.simulator.cli import main

raise SystemExit(main())
