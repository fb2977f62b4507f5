import sys

from geomvision.cli import main

sys.exit(main())
