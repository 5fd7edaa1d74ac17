"""STAC: EnMAP L2A item layout (DLR ``ENMAP_HSI_L2A``), searches through an API or a static catalog."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
from pyproj import Transformer

from deepsalt.errors import DeepSaltInputError
from deepsalt.redact import redact_url

COLLECTION = "ENMAP_HSI_L2A"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXTENSIONS = ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
              "https://stac-extensions.github.io/projection/v1.1.0/schema.json"]
#: quality asset key -> extra role, as DLR tags them
QUALITY_ASSETS = {"quality_cloud": "cloud", "quality_cloud_shadow": "cloud-shadow", "quality_haze": "haze",
                  "quality_snow": "snow"}


def enmap_item(scene: dict, files: dict, r: dict, bands, n: int) -> pystac.Item:
    """A STAC Item laid out like DLR's: item-level proj:epsg null, projection and bands on the image asset."""
    to_ll = Transformer.from_crs(f"EPSG:{scene['epsg']}", "EPSG:4326", always_xy=True)
    t = r["transform"]
    xs = [t.c, t.c + n * t.a, t.c + n * t.a, t.c, t.c]
    ys = [t.f, t.f, t.f + n * t.e, t.f + n * t.e, t.f]
    lon, lat = to_ll.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat)]
    item = pystac.Item(
        id=scene["id"], geometry={"type": "Polygon", "coordinates": [ring]},
        bbox=[min(lon), min(lat), max(lon), max(lat)], datetime=scene["datetime"], collection=COLLECTION,
        stac_extensions=EXTENSIONS,
        properties={"platform": "EnMAP", "instruments": ["hsi"], "proj:epsg": None, "enmap:nodata": -32768,
                    "eo:cloud_cover": round(100 * r["cloud_cover"], 2), "enmap:cirrus_cover": 0.0,
                    "enmap:haze_cover": round(100 * r["haze_cover"], 2), "enmap:overallQuality": 0})
    proj = {"proj:epsg": scene["epsg"], "proj:shape": [n, n], "proj:transform": list(t)[:6]}
    item.add_asset("image", pystac.Asset(str(Path(files["image"]).resolve()), title="Spectral Image", media_type=COG,
                                         roles=["data"], extra_fields={"eo:bands": bands.to_eo_bands(), **proj}))
    item.add_asset("metadata", pystac.Asset(str(Path(files["metadata"]).resolve()), title="Metadata",
                                            media_type="application/xml", roles=["metadata"]))
    for key, role in QUALITY_ASSETS.items():
        item.add_asset(key, pystac.Asset(str(Path(files[key]).resolve()), media_type=COG, roles=["quality", role],
                                         extra_fields=proj))
    return item


def enmap_collection(items: list[pystac.Item]) -> pystac.Collection:
    bb = np.array([i.bbox for i in items])
    times = sorted(i.datetime for i in items)
    return pystac.Collection(
        id=COLLECTION, description="EnMAP HSI L2A-like scenes of the DeepSalt synthetic world (same layout as DLR's collection)",
        extent=pystac.Extent(pystac.SpatialExtent([[bb[:, 0].min(), bb[:, 1].min(), bb[:, 2].max(), bb[:, 3].max()]]),
                             pystac.TemporalExtent([[times[0], times[-1]]])),
        license="CC-BY-4.0", stac_extensions=EXTENSIONS)


def write_item_collection(items: list[pystac.Item], path: str | Path) -> None:
    fc = {"type": "FeatureCollection", "features": [i.to_dict(include_self_link=False) for i in items]}
    Path(path).write_text(json.dumps(fc, indent=1))


def rebase_hrefs(items: list[pystac.Item], old_root: str, new_root: str) -> list[pystac.Item]:
    """Copies of ``items`` with asset hrefs under ``old_root`` moved to ``new_root`` (e.g. after an upload to S3)."""
    out = []
    for item in items:
        item = item.clone()
        for a in item.assets.values():
            if a.href.startswith(old_root):
                a.href = new_root.rstrip("/") + a.href[len(old_root.rstrip("/")):]
        out.append(item)
    return out


def item_time(item: pystac.Item) -> datetime:
    """The acquisition time: ``datetime``, or for an item with ``datetime: null`` (valid STAC) the start (else
    end) of its ``start_datetime``/``end_datetime`` range."""
    t = item.datetime or item.common_metadata.start_datetime or item.common_metadata.end_datetime
    if t is None:
        raise DeepSaltInputError(f"STAC item {item.id}", "has neither datetime nor start_datetime/end_datetime",
                                 "fix the item: STAC requires one of them")
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def cloud_cover(item: pystac.Item) -> float:
    """``eo:cloud_cover`` in % (0 when absent; numbers may arrive as strings); anything else is an error."""
    v = item.properties.get("eo:cloud_cover")
    if v is None:
        return 0.0
    try:
        c = float(v)
    except (TypeError, ValueError):
        c = float("nan")
    if not 0 <= c <= 100:
        raise DeepSaltInputError(f"STAC item {item.id}", f"eo:cloud_cover {v!r} is not a percentage in 0-100",
                                 "fix the item, or drop it from the catalog")
    return c


def priority(item: pystac.Item):
    """Sort key: least cloud first, then newest, then id (which scene's pixel wins where scenes overlap)."""
    return (cloud_cover(item), -item_time(item).timestamp(), item.id)


def _parse_interval(dt: str | None):
    if not dt:
        return None, None
    parts = dt.split("/") if "/" in dt else [dt, dt]

    def p(s, end):
        if s in ("", ".."):
            return None
        if len(s) == 10:
            s += "T23:59:59Z" if end else "T00:00:00Z"
        return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)
    return p(parts[0], False), p(parts[1], True)


def _static_items(path: Path) -> list[pystac.Item]:
    p = path / "items.json" if path.is_dir() else path
    if not p.exists():
        raise DeepSaltInputError(path, "no STAC items found", "pass a STAC API URL, an items.json FeatureCollection or its folder")
    doc = json.loads(p.read_text())
    feats = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
    return [pystac.Item.from_dict(f) for f in feats]


def search_items(stac: str, collection: str = COLLECTION, bbox=None, datetime_range: str | None = None,
                 max_cloud: float | None = None, ids: list[str] | None = None) -> list[pystac.Item]:
    """EnMAP items intersecting ``bbox`` (lon/lat) within ``datetime_range`` and at most ``max_cloud`` % cloud.

    ``stac`` is a STAC API URL (searched with pystac-client) or a local items.json / folder (filtered here
    with the same rules). Items come back sorted by datetime then id, so every run sees the same order.
    """
    if stac.startswith(("http://", "https://")):
        import pystac_client
        try:
            client = pystac_client.Client.open(stac, timeout=30)
            # Cloud cover is filtered below, not with `query`: not every API (rustac, DLR's) conforms to it.
            search = client.search(collections=[collection], bbox=bbox, datetime=datetime_range, ids=ids,
                                   max_items=None, limit=100)
            items = list(search.items())
        except Exception as e:  # noqa: BLE001 - connection, HTTP and JSON errors all mean "no answer"
            raise DeepSaltInputError(redact_url(stac), f"STAC API search failed ({type(e).__name__}: {str(e)[:200]})",
                                     "check that the API URL is right and reachable") from None
    else:
        items = [i for i in _static_items(Path(stac)) if i.collection_id in (None, collection)]
        if ids:
            items = [i for i in items if i.id in ids]
        if bbox is not None:
            x0, y0, x1, y1 = bbox
            items = [i for i in items if not (i.bbox[0] > x1 or i.bbox[2] < x0 or i.bbox[1] > y1 or i.bbox[3] < y0)]
        lo, hi = _parse_interval(datetime_range)
        items = [i for i in items if (lo is None or item_time(i) >= lo) and (hi is None or item_time(i) <= hi)]
    if max_cloud is not None:
        items = [i for i in items if cloud_cover(i) <= max_cloud]
    return sorted(items, key=lambda i: (item_time(i), i.id))
