"""STAC searches through a real API (rustac serve) with pystac-client, and the static-catalog path."""

import pytest

from deepsalt.data.stac import search_items
from deepsalt.errors import DeepSaltInputError


def test_api_search_by_bbox_and_datetime(world, stac_url):
    every = search_items(stac_url)
    assert len(every) == 3
    first = every[0]
    x0, y0, x1, y1 = first.bbox
    hit = search_items(stac_url, bbox=[x0 + 0.01, y0 + 0.01, x0 + 0.02, y0 + 0.02])
    assert [i.id for i in hit] == [first.id]
    day = first.datetime.strftime("%Y-%m-%d")
    assert [i.id for i in search_items(stac_url, datetime_range=f"{day}/{day}")] == [first.id]
    assert search_items(stac_url, datetime_range="2020-01-01/2020-12-31") == []
    # an API search and a static-catalog search agree
    static = search_items(str(world / "stac"), bbox=[x0 + 0.01, y0 + 0.01, x0 + 0.02, y0 + 0.02])
    assert [i.id for i in static] == [first.id]
    assert static[0].assets["image"].href == first.assets["image"].href


def test_max_cloud_filter(world, stac_url):
    every = search_items(stac_url)
    clouds = sorted(float(i.properties["eo:cloud_cover"]) for i in every)
    limit = (clouds[0] + clouds[1]) / 2
    assert len(search_items(stac_url, max_cloud=limit)) == 1
    assert len(search_items(str(world / "stac"), max_cloud=limit)) == 1


def test_unreachable_api_names_the_url():
    url = "http://127.0.0.1:9/stac"  # discard port: nothing listens
    with pytest.raises(DeepSaltInputError, match="127.0.0.1:9/stac: STAC API search failed"):
        search_items(url)


def test_missing_static_catalog(tmp_path):
    with pytest.raises(DeepSaltInputError, match="no STAC items found"):
        search_items(str(tmp_path))


def test_static_collection_with_relative_hrefs_is_followed_and_resolved(world, stac_url):
    import json

    api = {i.id: i.assets["image"].href for i in search_items(stac_url)}
    static = search_items(str(world / "stac" / "collection.json"))  # links followed, ./ hrefs resolved per item
    assert {i.id: i.assets["image"].href for i in static} == api
    item_file = next((world / "scenes").glob("*/*.json"))
    assert json.loads(item_file.read_text())["assets"]["image"]["href"].startswith("./")
    assert [i.id for i in search_items(str(item_file))] == [item_file.stem]  # a single Item file


@pytest.mark.parametrize("content, match", [("{", "cannot read the static STAC"), ('{"type": "Thing"}', "not a STAC ItemCollection")])
def test_bad_static_stac_is_one_clear_error(tmp_path, content, match):
    (tmp_path / "catalog.json").write_text(content)
    with pytest.raises(DeepSaltInputError, match=match):
        search_items(str(tmp_path / "catalog.json"))
