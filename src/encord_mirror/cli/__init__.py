"""The `encord-mirror` command line: `main.py` is the entry point, `args.py` declares every command's
flags (no heavy imports, so `--help` is instant), and each command runs from its own module (`sync`,
`status`, `demo`, `coco`, `emulator`), imported only when that command runs."""
