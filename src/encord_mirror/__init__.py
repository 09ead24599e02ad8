"""encord-mirror: keep a data lake in step with Encord labels."""

__version__ = "0.1.0"
