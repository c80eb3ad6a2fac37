import sys

from functions.worker import main

sys.exit(main())
