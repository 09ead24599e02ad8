"""`make bench`: side-by-side measurements against baselines (never timed assertions in tests)."""
