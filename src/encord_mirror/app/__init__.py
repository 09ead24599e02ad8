"""Application services: wiring the domain to an adapter set (the CLI and the demo build on these)."""
