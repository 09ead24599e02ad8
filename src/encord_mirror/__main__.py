import sys

from encord_mirror.cli.main import main

sys.exit(main())
