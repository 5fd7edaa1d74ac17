"""Tile fingerprints: a hash of everything that can change a tile's pixels. A run maps exactly the tiles whose
fingerprint differs from the one stored with them in the cube.

Inputs: the output contract (``CUBE_FORMAT``) and the composite rule; the whole model bundle (``bundle.json``
with its scalers, band list and output range, and the weights); the covariates' identity (each raster's href
and its size and modification time or ETag); the value-changing options (MC-dropout passes, which quality
masks apply); and per scene, in compositing order: the item's properties (gains, offsets, nodata, cloud
cover...) and the assets that are read (href, ``eo:bands`` and other fields, checksums), with each file's
size and modification time or ETag, so a file rewritten under the same href counts as changed.
"""

from __future__ import annotations

import hashlib
import json

import fsspec
import pystac

from deepsalt.data.cog import file_stamp
from deepsalt.data.covariates import covariate_hrefs
from deepsalt.data.enmap import EnMAPScene
from deepsalt.data.stac import item_time
from deepsalt.errors import DeepSaltInputError

#: how overlapping scenes are combined (``mapping.tiles``); bump when the rule changes
COMPOSITE_RULE = ("first-valid: least eo:cloud_cover, newest, id / exact nearest pixel by index / nodata judged on the "
                  "model's bands only / v3")


def _sha(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def bundle_identity(model: str) -> str:
    """SHA-256 of ``bundle.json`` and the weights, together."""
    fs, path = fsspec.core.url_to_fs(model)
    try:
        return hashlib.sha256(fs.cat(f"{path}/bundle.json") + b"\0" + fs.cat(f"{path}/weights.safetensors")).hexdigest()
    except FileNotFoundError:
        raise DeepSaltInputError(model, "not a model bundle", "pass RUN/bundle from `deepsalt train`") from None


def covariates_identity(source: str) -> str:
    return _sha({n: [h, file_stamp(h, f"covariate '{n}'")] for n, h in covariate_hrefs(source).items()})


def scene_identity(item: pystac.Item, quality: tuple[str, ...], allow_http: bool = False) -> str:
    """The item's content and the files it points to, for the assets a run reads."""
    scene = EnMAPScene.from_item(item, allow_http)
    assets = {}
    for key in (EnMAPScene.IMAGE_ASSET, *quality):
        href = scene.href(key)
        assets[key] = [item.assets[key].to_dict(), file_stamp(href, f"asset '{key}' of STAC item {item.id}")]
    return _sha(item.id, item_time(item).isoformat(), item.properties, assets)


def run_identity(bundle_sha: str, covariates: str, mc_samples: int, quality: tuple[str, ...]) -> str:
    from deepsalt.mapping.cube import CUBE_FORMAT

    return _sha(CUBE_FORMAT, COMPOSITE_RULE, bundle_sha, covariates_identity(covariates), int(mc_samples), list(quality))


def tile_fingerprint(run_id: str, scene_ids: list[str]) -> int:
    """A non-zero 63-bit integer (stored as uint64) from the run identity and the tile's scene identities in
    compositing order."""
    return int(_sha(run_id, scene_ids)[:16], 16) & ((1 << 63) - 1) or 1
