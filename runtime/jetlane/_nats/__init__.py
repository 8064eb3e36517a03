"""The NATS room: the only code that imports nats (connection, log, streams, pulls)."""
