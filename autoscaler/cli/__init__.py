"""The ``autoscaler`` command line: one module per group of subcommands (``main`` is the entry)."""
