"""The server-free suite: the pure core, the wire, jetlane.testing and the room rules."""
