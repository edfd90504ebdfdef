"""Tools behind the ``kb`` command: load, check, report and render knowledge-base cards."""

__version__ = "0.1.0"
