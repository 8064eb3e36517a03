"""The pure core: wire types, the replay core and what it needs. No I/O, no NATS."""
