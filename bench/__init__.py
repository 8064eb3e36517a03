"""jetlane's benchmark suite: W1-W6 against the raw JetStream floor, measured in one run.

``python -m bench`` starts its own embedded nats-server (loopback, temporary
storage), measures the floor (what raw JetStream costs from nats-py on this
machine, right now) and then each workload, and prints every figure as the
median of several rounds with its min-max and its ratio to the floor. The
figures are also written as JSON to ``bench/results/``. See
``docs/performance.md`` for the method and the latest figures.

Each workload lives in its own module and gets a fresh stream and subject
tree (``Names``), so nothing one workload leaves behind slows the next.
"""
