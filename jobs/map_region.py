"""Entry point for `ray job submit --working-dir . -- python jobs/map_region.py --stac ... --model ... --out ...`.

The same flags as `deepsalt map` (see `python jobs/map_region.py --help`); the job's driver joins the
cluster through RAY_ADDRESS, which `ray job submit` sets.
"""

import sys

from deepsalt.cli import main

if __name__ == "__main__":
    main(["map", *sys.argv[1:]])
