"""The detector families. Importing this package imports no family: the variants are listed, without
torch, by :mod:`detmodels.catalog` (from the ``*_options`` modules), and a family's model code is
imported when one of its models is built."""
