import sys

from kleened.cli import main

sys.exit(main())
