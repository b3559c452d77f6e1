"""Parsers of Ceph mon_command replies: real shapes parse, bad or hostile ones fail clearly."""

from __future__ import annotations

import pytest

from collectors.ceph import (
    parse_df,
    parse_health,
    parse_osd_perf,
    parse_osd_tree,
    parse_pg_counts,
    serves_io,
)
from collectors.common import MalformedReply


def _osd(osd: int, status: str = "up", reweight: float = 1) -> dict[str, object]:
    return {"id": osd, "name": f"osd.{osd}", "type": "osd", "status": status, "reweight": reweight}


TREE = {
    "nodes": [
        {"id": -1, "name": "default", "type": "root", "children": [-4, -8]},
        {"id": -4, "name": "r1", "type": "rack", "children": [-3]},
        {"id": -3, "name": "r1-osd0", "type": "host", "children": [0, 1]},
        {"id": -8, "name": "r2", "type": "rack", "children": [-7]},
        {"id": -7, "name": "r2-osd2", "type": "host", "children": [2]},
        _osd(0),
        _osd(1, "down"),
        _osd(2, "up", 0),
        _osd(5),  # an OSD outside any rack bucket
    ],
    "stray": [],
}


def test_osd_tree_maps_each_osd_to_the_rack_above_it_with_up_and_in() -> None:
    osds = parse_osd_tree(TREE)
    assert {o: (s.rack, s.up, s.in_cluster) for o, s in osds.items()} == {
        0: ("r1", True, True),
        1: ("r1", False, True),
        2: ("r2", True, False),
        5: (None, True, True),
    }


def test_a_crush_cycle_is_not_followed_forever() -> None:
    tree = {
        "nodes": [
            {"id": -2, "name": "r1", "type": "rack", "children": [-3]},
            {"id": -3, "name": "h", "type": "host", "children": [-2, 0, "x", True]},
            _osd(0),
        ]
    }
    assert parse_osd_tree(tree)[0].rack == "r1"


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        (None, "expected dict"),
        ({"nodes": "all"}, "expected list"),
        ({"nodes": [{"name": "x"}]}, "no 'id'"),
        ({"nodes": [{**_osd(0), "status": "exploded"}]}, "unknown value"),
        ({"nodes": [{**_osd(0), "reweight": "1"}]}, "expected a number"),
        ({"nodes": [{**_osd(0), "reweight": True}]}, "expected a number"),
        ({"nodes": [{"id": 1e400}]}, "not finite"),
    ],
)
def test_malformed_osd_trees_are_refused_with_a_clear_error(reply: object, complaint: str) -> None:
    with pytest.raises(MalformedReply, match=complaint):
        parse_osd_tree(reply)


def test_health_detail_gives_each_check_with_its_count() -> None:
    status, checks = parse_health(
        {
            "status": "HEALTH_WARN",
            "checks": {
                "OSD_DOWN": {
                    "severity": "HEALTH_WARN",
                    "summary": {"message": "2 osds down", "count": 2},
                    "detail": [],
                },
                "OSD_RACK_DOWN": {"severity": "HEALTH_WARN", "summary": {"message": "1 rack"}},
            },
        }
    )
    assert status == "HEALTH_WARN"
    assert [(c.name, c.count) for c in checks] == [("OSD_DOWN", 2.0), ("OSD_RACK_DOWN", 1.0)]


@pytest.mark.parametrize(
    "reply",
    [
        {"status": "HEALTH_FINE", "checks": {}},
        {"status": "HEALTH_OK"},
        {"status": "HEALTH_WARN", "checks": {"X": {"severity": "HEALTH_WARN"}}},
        {"status": "HEALTH_WARN", "checks": {"X": {"severity": 1, "summary": {"message": ""}}}},
        {"status": ["HEALTH_OK"], "checks": {}},
    ],
)
def test_malformed_health_is_refused(reply: object) -> None:
    with pytest.raises(MalformedReply):
        parse_health(reply)


def test_df_perf_and_pg_counts_parse_the_real_shapes() -> None:
    total, used, pools = parse_df(
        {
            "stats": {"total_bytes": 1000, "total_used_raw_bytes": 10},
            "pools": [
                {
                    "name": "lab",
                    "id": 1,
                    "stats": {"stored": 5, "objects": 1, "percent_used": 0.5, "max_avail": 400},
                }
            ],
        }
    )
    assert (total, used, pools[0].name, pools[0].max_avail_bytes) == (1000, 10, "lab", 400)
    perf = parse_osd_perf(
        {
            "osdstats": {
                "osd_perf_infos": [
                    {"id": 3, "perf_stats": {"commit_latency_ms": 7, "apply_latency_ms": 2}}
                ]
            }
        }
    )
    assert perf == {3: (7.0, 2.0)}
    pgs = parse_pg_counts(
        {
            "pgmap": {
                "num_pgs": 8,
                "pgs_by_state": [
                    {"state_name": "active+clean", "count": 6},
                    {"state_name": "active+undersized+degraded", "count": 2},
                ],
            }
        }
    )
    assert pgs == (8.0, 6.0, 8.0)


@pytest.mark.parametrize(
    ("state", "serves"),
    [
        ("active+clean", True),
        ("active+undersized+degraded", True),
        ("active+clean+scrubbing+deep", True),
        ("activating+undersized", False),  # "activating" is not the "active" component
        ("peering", False),
        ("undersized+degraded+peered", False),
        ("stale+active+clean", False),  # the mon has not heard from the primary
        ("unknown", False),
        ("down", False),
    ],
)
def test_only_pg_states_with_the_active_component_and_not_stale_serve_io(
    state: str, serves: bool
) -> None:
    assert serves_io(state) is serves


def test_pgs_not_active_are_counted_as_inactive_with_those_no_state_covers() -> None:
    total, clean, active = parse_pg_counts(
        {
            "pgmap": {
                "num_pgs": 10,
                "pgs_by_state": [
                    {"state_name": "active+clean", "count": 5},
                    {"state_name": "peering", "count": 2},
                    {"state_name": "activating", "count": 1},
                ],
            }
        }
    )
    assert (total, clean, active) == (10.0, 5.0, 5.0)  # 5 inactive: 2 + 1 + 2 in no state yet


def test_a_negative_latency_or_missing_pool_stats_is_refused() -> None:
    with pytest.raises(MalformedReply, match="no 'stats'"):
        parse_df({"stats": {"total_bytes": 1, "total_used_raw_bytes": 0}, "pools": [{"name": "p"}]})
    with pytest.raises(MalformedReply, match="perf_stats"):
        parse_osd_perf({"osdstats": {"osd_perf_infos": [{"id": 1}]}})
    negative = {"commit_latency_ms": -1, "apply_latency_ms": 0}
    with pytest.raises(MalformedReply, match="negative latency"):
        parse_osd_perf({"osdstats": {"osd_perf_infos": [{"id": 1, "perf_stats": negative}]}})
