"""`python -m nixos_test_ng.guest build|scripts ...`"""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
