"""python -m tools.erl: the same as the ``erl`` console script."""

import sys

from tools.erl.main import main

sys.exit(main())
