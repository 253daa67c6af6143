"""Ray Job entrypoint for the embed stage on a cluster.

Submit from a machine that can reach the cluster's dashboard:

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml --working-dir . -- \
        python jobs/embed_job.py --images /shared/images --out /shared/runs/r1 --models /shared/models

The driver joins the cluster (``RAY_ADDRESS`` is set by the job server), plans the run (errors
before any work), and streams shards to the shared run directory; re-submitting resumes.
"""

from __future__ import annotations

import sys

from usam_ray.cli import app

if __name__ == "__main__":
    sys.exit(app(["embed", *sys.argv[1:]]))
