"""``python -m usam_ray.cli``: the ``usam-ray`` command."""

import sys

from . import main

sys.exit(main())
