"""Scheduled re-mapping: `python jobs/remap.py <the same flags as map_region.py>`.

Mapping is incremental by construction (per-tile fingerprints kept in the cube's _deepsalt/state.json), so a
schedule simply re-runs the region's job: tiles whose scenes are new or changed are mapped, others are left.
"""

import sys

from deepsalt.cli import app

if __name__ == "__main__":
    app(["map", *sys.argv[1:]])
