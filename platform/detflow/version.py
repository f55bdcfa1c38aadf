"""detflow's version (a leaf module: lower layers read it here, not from the package root, whose
``__init__`` imports the SDK)."""
__version__ = "0.1.0"
