"""The fixed continental output grid. Tiles are whole chunks; shards are ``shard x shard`` tiles, and one write
task owns all the tiles of a shard, so no two write tasks ever share a stored object."""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.warp import transform_bounds


@dataclass(frozen=True)
class Grid:
    """A north-up grid: ``crs``, pixel size ``res`` (m), top-left corner (x0, y0), size, chunk side (px).

    The default (``GRIDS["conus"]``) is CONUS Albers (EPSG:5070) at 30 m with its origin on a 30 m lattice,
    covering the lower 48 states: every regional run lands in the same cells of the same cube.
    Chunks of 256 x 256 float32 are 256 KiB raw (~100 KiB compressed): small enough that one tile of 224 int16
    bands stays ~30 MB in memory per scene. ``shard`` tiles per side go into one stored object (Zarr v3
    sharding): fewer, larger objects for object storage, while a reader still fetches one chunk by byte range.
    """

    crs: str
    res: float
    x0: float
    y0: float
    width: int
    height: int
    chunk: int = 256
    shard: int = 1

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0, self.x0, 0, -self.res, self.y0)

    @property
    def n_tiles(self) -> tuple[int, int]:
        return math.ceil(self.height / self.chunk), math.ceil(self.width / self.chunk)

    def tile_transform(self, ty: int, tx: int) -> Affine:
        return Affine(self.res, 0, self.x0 + tx * self.chunk * self.res, 0, -self.res, self.y0 - ty * self.chunk * self.res)

    def tile_shape(self, ty: int, tx: int) -> tuple[int, int]:
        return min(self.chunk, self.height - ty * self.chunk), min(self.chunk, self.width - tx * self.chunk)

    def tile_slices(self, ty: int, tx: int) -> tuple[slice, slice]:
        h, w = self.tile_shape(ty, tx)
        return slice(ty * self.chunk, ty * self.chunk + h), slice(tx * self.chunk, tx * self.chunk + w)

    def shard_of(self, ty: int, tx: int) -> tuple[int, int]:
        return ty // self.shard, tx // self.shard

    def shard_slices(self, sy: int, sx: int) -> tuple[slice, slice]:
        side = self.chunk * self.shard
        return (slice(sy * side, min((sy + 1) * side, self.height)), slice(sx * side, min((sx + 1) * side, self.width)))

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the cell containing grid-CRS point (x, y)."""
        return math.floor((self.y0 - y) / self.res), math.floor((x - self.x0) / self.res)

    def tile_box(self, bounds, crs) -> "TileBox":
        """The tiles intersecting ``bounds`` (minx, miny, maxx, maxy) given in ``crs``, as a box of tile indices (a
        region of a continental grid can hold millions of tiles: test membership, do not list them)."""
        x0, y0, x1, y1 = transform_bounds(crs, self.crs, *bounds, densify_pts=21)
        c = self.res * self.chunk
        return TileBox(max(0, math.floor((self.y0 - y1) / c)), min(self.n_tiles[0] - 1, math.floor((self.y0 - y0) / c)),
                       max(0, math.floor((x0 - self.x0) / c)), min(self.n_tiles[1] - 1, math.floor((x1 - self.x0) / c)))

    def tiles_for_bounds(self, bounds, crs) -> list[tuple[int, int]]:
        """Tiles intersecting ``bounds`` (minx, miny, maxx, maxy) given in ``crs``: a scene's, a few dozen."""
        b = self.tile_box(bounds, crs)
        return [(ty, tx) for ty in range(b.ty0, b.ty1 + 1) for tx in range(b.tx0, b.tx1 + 1)]

    def to_dict(self) -> dict:
        return dict(crs=self.crs, res=self.res, x0=self.x0, y0=self.y0, width=self.width, height=self.height, chunk=self.chunk,
                    shard=self.shard)


@dataclass(frozen=True)
class TileBox:
    """Tiles ``ty0..ty1`` x ``tx0..tx1`` (inclusive); ``(ty, tx) in box``."""

    ty0: int
    ty1: int
    tx0: int
    tx1: int

    def __contains__(self, key) -> bool:
        return self.ty0 <= key[0] <= self.ty1 and self.tx0 <= key[1] <= self.tx1


GRIDS = {
    # CONUS Albers Equal Area, the USGS/NLCD extent snapped to 30 m
    "conus": Grid("EPSG:5070", 30.0, -2_361_585.0, 3_177_435.0, 154_335, 104_419),
    # Europe: ETRS89-LAEA (EPSG:3035) at 30 m over the EEA reference extent
    "europe": Grid("EPSG:3035", 30.0, 2_500_000.0, 5_500_000.0, 150_000, 140_000),
    # Every land surface: Equal Earth (EPSG:8857, equal-area, pseudocylindrical, so shapes stay usable far from the
    # equator, unlike a cylindrical equal-area grid), the whole projected globe (x +-17,243,959 m, y +-8,392,928 m)
    # snapped outwards to a 30 m lattice. Chunks are sparse: only mapped tiles are ever stored.
    "global": Grid("EPSG:8857", 30.0, -17_243_970.0, 8_392_950.0, 1_149_598, 559_530),
}
