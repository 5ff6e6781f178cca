"""Tests of the systemd-facing edges: services, notify, logs, lock, statefile, hooks, unit."""
