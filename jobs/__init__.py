"""Example jobs, served by ``jetlane runner --jobs jobs`` (or ``jetlane dev``).

Each module registers its jobs with ``@job`` when imported. A module that
needs objects on the runner (a deploy client, an HTTP session) defines
``plugins()``, a factory returning ``{name: object}``; the runner calls every
imported module's factory and hands the objects to handlers as
``ctx.plugins.<name>``. Add a job by adding a module here.
"""
