import sys

from sparsekit.cli import main

sys.exit(main())
