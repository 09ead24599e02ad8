import sys

from encord_mirror.cli import main

sys.exit(main())
