"""`python -m functions.cli …` runs `tierflow …`."""

import sys

from functions.cli.main import main

sys.exit(main())
