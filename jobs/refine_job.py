"""Ray Job entrypoint of `usam-ray refine` (what `usam-ray submit` starts on the cluster).

`usam-ray submit CONFIG` resolves and checks the configuration on the submitting machine and
passes it in $USAM_RAY_JOB_CONFIG; this runs the same command as the CLI with it, joined to the
cluster (the job server sets RAY_ADDRESS). Exit code: 0 complete, 3 incomplete, 2 bad input, 1 failed.
"""

import sys

from usam_ray.cli.cluster import job_main

if __name__ == "__main__":
    sys.exit(job_main("refine"))
