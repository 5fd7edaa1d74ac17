"""Field sites as surveyors hand them over: vector formats read by GDAL/OGR (pyogrio) in any CRS, WKT/WKB and
GeoParquet read by shapely, European CSVs, dates that cannot be misread, values in another unit, lon/lat swapped."""

import json

import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from deepsalt.data.sites import extract_sites, read_sites
from deepsalt.errors import DeepSaltInputError


@pytest.fixture(scope="module")
def csv_sites(world):
    df, _ = read_sites(str(world / "native" / "sites.csv"))
    return df.head(25).reset_index(drop=True)


def _write_vector(path, df, geoms, crs="EPSG:4326", layer=None, driver=None, append=False):
    fields = ["site_id", "date", "ece_dsm"]
    pyogrio.raw.write(str(path), shapely.to_wkb(geoms), [df["site_id"].to_numpy(object),
                                                         df["date"].dt.strftime("%Y-%m-%d").to_numpy(object),
                                                         df["ece_dsm"].to_numpy(float)],
                      fields=fields, crs=crs, geometry_type=geoms[0].geom_type + (" Z" if shapely.has_z(geoms[0]) else ""),
                      layer=layer, driver=driver, append=append)


def _same(got: pd.DataFrame, want: pd.DataFrame, atol=1e-7):
    """The same sites (FlatGeobuf stores features in its spatial index's order: compared by site id)."""
    got, want = got.sort_values("site_id").reset_index(drop=True), want.sort_values("site_id").reset_index(drop=True)
    np.testing.assert_allclose(got["lon"], want["lon"], atol=atol)
    np.testing.assert_allclose(got["lat"], want["lat"], atol=atol)
    assert list(got["date"]) == list(want["date"]) and list(got["site_id"]) == list(want["site_id"])
    np.testing.assert_allclose(got["ece_dsm"], want["ece_dsm"], rtol=1e-9)


def test_vector_formats_in_any_crs_read_as_the_csv(csv_sites, tmp_path):
    """GeoPackage (two layers: --layer picks one), GeoJSON with POINT Z, FlatGeobuf and Shapefile, in WGS84 or Web
    Mercator, give the CSV's positions, dates and values."""
    lon, lat = csv_sites["lon"].to_numpy(), csv_sites["lat"].to_numpy()
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    merc, plain = shapely.points(x, y), shapely.points(lon, lat, np.full(len(lon), 312.0))  # the second with Z
    gpkg = tmp_path / "survey.gpkg"
    _write_vector(gpkg, csv_sites, merc, "EPSG:3857", layer="sites_2024", driver="GPKG")
    _write_vector(gpkg, csv_sites.head(3), merc[:3], "EPSG:3857", layer="other", driver="GPKG", append=True)
    with pytest.raises(DeepSaltInputError, match=r"holds 2 layers \(sites_2024, other\) \(pass --layer NAME\)"):
        read_sites(str(gpkg))
    got, found = read_sites(str(gpkg), layer="sites_2024")
    assert found == ["ece_dsm"]
    _same(got, csv_sites, atol=1e-6)
    with pytest.raises(DeepSaltInputError, match="has no layer 'nope'"):
        read_sites(str(gpkg), layer="nope")
    for name, driver in (("s.geojson", "GeoJSON"), ("s.fgb", "FlatGeobuf"), ("s.shp", "ESRI Shapefile")):
        _write_vector(tmp_path / name, csv_sites, plain, driver=driver)
        _same(read_sites(str(tmp_path / name))[0], csv_sites)
    # a MultiPoint of one point is that point; of two, one clear line
    multi = shapely.multipoints([[p] for p in shapely.points(lon, lat)])
    _write_vector(tmp_path / "m.gpkg", csv_sites, multi, driver="GPKG")
    _same(read_sites(str(tmp_path / "m.gpkg"))[0], csv_sites)
    two = np.array([shapely.MultiPoint([(lon[0], lat[0]), (lon[1], lat[1])]), *multi[1:]], dtype=object)
    _write_vector(tmp_path / "m2.gpkg", csv_sites, two, driver="GPKG")
    with pytest.raises(DeepSaltInputError, match="feature 0 is a MultiPoint of 2 points"):
        read_sites(str(tmp_path / "m2.gpkg"))
    lines = shapely.linestrings([[(a, b), (a + 0.01, b)] for a, b in zip(lon, lat)])
    _write_vector(tmp_path / "l.gpkg", csv_sites, lines, driver="GPKG")
    with pytest.raises(DeepSaltInputError, match="feature 0 has a LineString, not a point"):
        read_sites(str(tmp_path / "l.gpkg"))


def test_wkt_wkb_geoparquet_and_european_csv(csv_sites, tmp_path):
    lon, lat = csv_sites["lon"].to_numpy(), csv_sites["lat"].to_numpy()
    base = csv_sites[["site_id", "date", "ece_dsm"]].assign(date=csv_sites["date"].dt.strftime("%Y-%m-%d"))
    base.assign(geometry=shapely.to_wkt(shapely.points(lon, lat, np.zeros(len(lon))), rounding_precision=-1)) \
        .to_csv(tmp_path / "wkt.csv", index=False)  # POINT Z (...)
    _same(read_sites(str(tmp_path / "wkt.csv"))[0], csv_sites)
    # GeoParquet: WKB in Web Mercator, its CRS in the file's "geo" metadata
    import pyarrow as pa
    import pyarrow.parquet as pq
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    t = pa.Table.from_pandas(base.assign(geometry=shapely.to_wkb(shapely.points(x, y))), preserve_index=False)
    from pyproj import CRS
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"], "crs": CRS.from_epsg(3857).to_json_dict()}}}
    pq.write_table(t.replace_schema_metadata({**(t.schema.metadata or {}), b"geo": json.dumps(geo).encode()}), tmp_path / "s.parquet")
    _same(read_sites(str(tmp_path / "s.parquet"))[0], csv_sites, atol=1e-6)
    # ';' separators and decimal commas, as European spreadsheets write CSV
    eu = base.assign(lon=lon, lat=lat)
    eu.to_csv(tmp_path / "eu.csv", sep=";", decimal=",", index=False)
    assert "," in (tmp_path / "eu.csv").read_text().splitlines()[1]
    _same(read_sites(str(tmp_path / "eu.csv"))[0], csv_sites)


@pytest.mark.parametrize("value, needle", [("03/06/2024", r"date\(s\) like '03/06/2024' \(row 0\) could be day/month or month/day "
                                                          r"\(pass --date-format %d/%m/%Y or %m/%d/%Y"),
                                           ("45445", r"like '45445' \(row 0\) is a number, not a date \(an Excel serial day"),
                                           ("2024", r"like '2024' \(row 0\) is a number"),
                                           ("next June", r"no readable date \(first: row 0, 'next June'\)")])
def test_dates_that_could_be_misread_are_refused(csv_sites, tmp_path, value, needle):
    df = csv_sites[["site_id", "lon", "lat", "ece_dsm"]].assign(date=csv_sites["date"].dt.strftime("%Y-%m-%d"))
    df.loc[0, "date"] = value
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DeepSaltInputError, match=needle):
        read_sites(str(tmp_path / "s.csv"))


def test_date_format_reads_day_month_as_declared(csv_sites, tmp_path):
    df = csv_sites[["site_id", "lon", "lat", "ece_dsm"]].assign(date=csv_sites["date"].dt.strftime("%d/%m/%Y"))
    df.to_csv(tmp_path / "s.csv", index=False)
    got, _ = read_sites(str(tmp_path / "s.csv"), date_format="%d/%m/%Y")
    assert list(got["date"]) == list(csv_sites["date"])
    df.loc[0, "date"] = "3 June 2024"
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DeepSaltInputError, match=r"row 0, '3 June 2024'\) \(write dates as YYYY-MM-DD\)"):
        read_sites(str(tmp_path / "s.csv"), date_format="%d/%m/%Y")


@pytest.mark.parametrize("column, value, needle", [("ece_dsm", 2447.0, r"1 value\(s\) of ece_dsm outside 0-200 dS m-1 \(e.g. 2447, site .*mS/m"),
                                                   ("ece_dsm", -0.5, r"ece_dsm outside 0-200"),
                                                   ("soc", 150.0, r"soc outside 0-60 % .*g/kg")])
def test_values_in_another_unit_are_refused(world, tmp_path, column, value, needle):
    df = pd.read_csv(world / "native" / "sites.csv").head(10)
    df.loc[3, column] = value
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DeepSaltInputError, match=needle):
        read_sites(str(tmp_path / "s.csv"))


def test_swapped_lon_lat_is_named_not_used(world, tmp_path):
    """Spain written as (40.4, -3.7): valid ranges, but in no scene, while (-3.7, 40.4) is in one."""
    item = json.loads((world / "stac" / "items.json").read_text())["features"][0]
    item["bbox"] = [-4.0, 40.0, -3.0, 41.0]
    item["geometry"] = {"type": "Polygon", "coordinates": [[[-4, 40], [-3, 40], [-3, 41], [-4, 41], [-4, 40]]]}
    (tmp_path / "stac").mkdir()
    (tmp_path / "stac" / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    day = item["properties"]["datetime"][:10]
    pd.DataFrame({"site_id": ["madrid"], "lon": [40.4], "lat": [-3.7], "date": [day], "ece_dsm": [3.0]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DeepSaltInputError, match=r"none of 1 sites has a clear pixel: 1 swapped"):
        extract_sites(str(tmp_path / "s.csv"), str(tmp_path / "stac"), str(world / "covariates"), str(tmp_path / "o.parquet"),
                      log=lambda *_: None)
