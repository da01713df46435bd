import sys

from carsweep.cli import main

sys.exit(main())
