"""Scheduled re-mapping: `python jobs/remap.py <the same flags as map_region.py>`.

Mapping is incremental by construction (per-tile fingerprints committed with the tiles in the cube), so a
schedule simply re-runs the region's job: tiles whose inputs are new or changed are mapped, tiles whose scenes
left the catalog are cleared, others are left. Overlapping schedules are safe: each run is one commit, and a
run that meets a conflicting commit re-plans on the new state.
"""

import sys

from deepsalt.cli import main

if __name__ == "__main__":
    main(["map", *sys.argv[1:]])
