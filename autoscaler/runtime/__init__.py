"""The controller runtime: collection, the snapshot builder, the cycle and its scheduling shell,
leadership (leases), state stores (journal, history, controls) and the actuation wiring."""
