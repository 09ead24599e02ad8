import sys

from encord_emulator.cli import main

sys.exit(main())
