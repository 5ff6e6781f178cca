"""migrestore: restore NVIDIA MIG geometry at boot and keep it."""

__version__ = "0.1.0"
