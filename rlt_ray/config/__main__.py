"""python -m rlt_ray.config [SECTION] [--help]: the configuration reference (rlt_ray.config.reference)."""

import sys

from rlt_ray.config.reference import main

sys.exit(main(sys.argv[1:]))
