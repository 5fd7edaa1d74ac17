"""STAC: EnMAP L2A item layout (DLR ``ENMAP_HSI_L2A``), searches through an API or a static catalog."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pystac
from pyproj import Transformer

from deepsalt.config import QUALITY_ASSETS
from deepsalt.errors import DeepSaltInputError
from deepsalt.redact import redact_url

COLLECTION = "ENMAP_HSI_L2A"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXTENSIONS = ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
              "https://stac-extensions.github.io/projection/v1.1.0/schema.json"]


def enmap_item(item_id: str, when: datetime, epsg: int, transform, shape: tuple[int, int], bands, files: dict,
               properties: dict, gain=None, offset=None) -> pystac.Item:
    """A STAC Item laid out like DLR's ``ENMAP_HSI_L2A`` items: item-level proj:epsg null, projection and bands (with
    each band's gain and offset) on the image asset, the quality layers as ``quality`` assets with DLR's roles.
    ``files``: asset key -> local path (``image``, ``metadata``, quality asset keys); ``properties`` add to and
    override the defaults (``eo:cloud_cover``, ``enmap:*`` covers, ``deepsalt:bad_bands``...)."""
    from deepsalt.data.l2a_product import EXTRA_LAYERS

    h, w = shape
    to_ll = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    t = transform
    xs = [t.c, t.c + w * t.a, t.c + w * t.a, t.c, t.c]
    ys = [t.f, t.f, t.f + h * t.e, t.f + h * t.e, t.f]
    lon, lat = to_ll.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat)]
    item = pystac.Item(
        id=item_id, geometry={"type": "Polygon", "coordinates": [ring]},
        bbox=[min(lon), min(lat), max(lon), max(lat)], datetime=when, collection=COLLECTION, stac_extensions=EXTENSIONS,
        properties={"platform": "EnMAP", "instruments": ["hsi"], "proj:epsg": None, "enmap:nodata": -32768,
                    "eo:cloud_cover": 0.0, "enmap:cirrus_cover": 0.0, "enmap:haze_cover": 0.0, "enmap:overallQuality": 0,
                    **properties})
    proj = {"proj:epsg": epsg, "proj:shape": [h, w], "proj:transform": list(t)[:6]}
    item.add_asset("image", pystac.Asset(str(Path(files["image"]).resolve()), title="Spectral Image", media_type=COG,
                                         roles=["data"], extra_fields={"eo:bands": bands.to_eo_bands(gain, offset), **proj}))
    item.add_asset("metadata", pystac.Asset(str(Path(files["metadata"]).resolve()), title="Metadata",
                                            media_type="application/xml", roles=["metadata"]))
    layers = {**{k: q.role for k, q in QUALITY_ASSETS.items()}, **{k: role for k, (_, role) in EXTRA_LAYERS.items()}}
    for key, role in layers.items():
        if key in files:
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


def write_static_collection(items: list[pystac.Item], path: str | Path) -> None:
    """A relocatable static STAC Collection at ``path``: each item is written beside its assets
    (``<scene folder>/<id>.json``, asset hrefs ``./<file>``) and linked from the collection by a relative href,
    so the folder can be copied or uploaded anywhere and ``--stac .../collection.json`` still maps."""
    import os

    col = enmap_collection(items)
    col.set_self_href(str(Path(path).resolve()))
    for item in items:
        item = item.clone()
        folder = Path(item.assets["image"].href).resolve().parent
        for a in item.assets.values():
            if os.path.relpath(Path(a.href).resolve(), folder).startswith(".."):
                raise ValueError(f"asset {a.href} is not in the folder of the item's image")
            a.href = str(Path(a.href).resolve())
        col.add_item(item)
        item.set_self_href(str(folder / f"{item.id}.json"))
    col.make_all_asset_hrefs_relative()  # ./<file>, relative to each item's own JSON
    col.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


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


def parse_interval(dt: str | None):
    """(start, end) of a STAC datetime or interval (``2024``, ``2024-05-01``, ``2024-05-01/2024-09-30``, ``../2024-09-30``,
    RFC 3339 times); None for an open end. Anything else is a ValueError naming the part at fault."""
    if not dt:
        return None, None
    parts = dt.split("/") if "/" in dt else [dt, dt]
    if len(parts) != 2:
        raise ValueError(f"'{dt}' is not a date or an interval START/END (e.g. 2024-05-01/2024-09-30)")

    def p(s, end):
        s = s.strip()
        if s in ("", ".."):
            return None
        try:
            if len(s) in (4, 7):  # a year or a month: its first or last moment
                first = datetime.fromisoformat(s + ("-01-01" if len(s) == 4 else "-01")).replace(tzinfo=timezone.utc)
                if not end:
                    return first
                nxt = first.replace(year=first.year + 1) if len(s) == 4 else (
                    first.replace(month=first.month + 1) if first.month < 12 else first.replace(year=first.year + 1, month=1))
                return nxt - timedelta(seconds=1)
            if len(s) == 10:
                s += "T23:59:59Z" if end else "T00:00:00Z"
            t = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"'{s}' in '{dt}' is not a date or time (YYYY, YYYY-MM, YYYY-MM-DD or RFC 3339, "
                             "e.g. 2024-05-01/2024-09-30)") from None
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    lo, hi = p(parts[0], False), p(parts[1], True)
    if lo and hi and lo > hi:
        raise ValueError(f"'{dt}' ends before it starts")
    return lo, hi


def _resolve_assets(item: pystac.Item, base: str) -> pystac.Item:
    """Relative asset hrefs resolved against the item's own location (its self link, else the file it came
    from), as the STAC spec says. Hrefs with '..' segments are left as they are, for the href check to refuse."""
    import posixpath
    import re

    for asset in item.assets.values():
        h = asset.href
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", h) or h.startswith("/") or ".." in h.replace("\\", "/").split("/"):
            continue
        root = item.get_self_href() or base
        asset.href = posixpath.normpath(posixpath.join(posixpath.dirname(root), h)) if "://" in root else \
            str((Path(root).parent / h).resolve())
    return item


def _static_items(src: str) -> list[pystac.Item]:
    """Items of a static STAC source: an ItemCollection (FeatureCollection) file, an Item, or a Catalog or
    Collection whose item links are followed (recursively); a folder means the first of collection.json,
    catalog.json, items.json in it (relocatable catalogs first: a folder that was moved still reads)."""
    path = Path(src)
    if path.is_dir():
        found = [path / n for n in ("collection.json", "catalog.json", "items.json") if (path / n).exists()]
        if not found:
            raise DeepSaltInputError(src, "no STAC items found (no items.json, catalog.json or collection.json)",
                                     "pass a STAC API URL, an ItemCollection file, or a static catalog or collection")
        path = found[0]
    if not path.exists():
        raise DeepSaltInputError(src, "does not exist", "pass a STAC API URL, an ItemCollection file, or a static catalog or collection")
    try:
        doc = json.loads(path.read_text())
        kind = doc.get("type")
        if kind == "FeatureCollection":
            items = [pystac.Item.from_dict(f) for f in doc["features"]]
        elif kind == "Feature":
            items = [pystac.read_file(str(path))]
        elif kind in ("Catalog", "Collection"):
            items = list(pystac.read_file(str(path)).get_items(recursive=True))
        else:
            raise DeepSaltInputError(src, f"not a STAC ItemCollection, Item, Catalog or Collection (type {kind!r})",
                                     "pass a STAC API URL or a static STAC file")
    except DeepSaltInputError:
        raise
    except Exception as e:  # noqa: BLE001 - bad JSON, a broken link, an invalid item
        raise DeepSaltInputError(src, f"cannot read the static STAC ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                                 "check the file and the links it follows") from None
    return [_resolve_assets(i, str(path.resolve())) for i in items]


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
        items = [i for i in _static_items(stac) if i.collection_id in (None, collection)]
        if ids:
            items = [i for i in items if i.id in ids]
        if bbox is not None:
            x0, y0, x1, y1 = bbox
            items = [i for i in items if not (i.bbox[0] > x1 or i.bbox[2] < x0 or i.bbox[1] > y1 or i.bbox[3] < y0)]
        lo, hi = parse_interval(datetime_range)
        items = [i for i in items if (lo is None or item_time(i) >= lo) and (hi is None or item_time(i) <= hi)]
    if max_cloud is not None:
        items = [i for i in items if cloud_cover(i) <= max_cloud]
    return sorted(items, key=lambda i: (item_time(i), i.id))
