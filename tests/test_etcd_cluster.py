"""The 3-member etcd test cluster itself: it forms, replicates, survives its leader and
takes a killed member back. etcd is installed by scripts/install-etcd.sh when missing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_cluster import EtcdCluster, ensure_etcd


@pytest.fixture(scope="session")
def etcd_bin_dir() -> Path:
    return ensure_etcd()


@pytest.fixture
def cluster(tmp_path: Path, etcd_bin_dir: Path) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path / "etcd", 3, bin_dir=etcd_bin_dir) as running:
        yield running


def test_cluster_forms_with_one_leader(cluster: EtcdCluster) -> None:
    assert len(cluster.endpoints) == 3
    assert len(set(cluster.endpoints)) == 3
    leader = cluster.leader()
    statuses = [cluster.status(m) for m in cluster.members]
    assert all(s is not None for s in statuses)
    # Every member names the same leader, and it is one of them.
    assert {int(s["leader"]) for s in statuses if s is not None} == {leader.member_id}
    assert len({m.member_id for m in cluster.members}) == 3
    # etcdctl from the same install talks to it too.
    listed = subprocess.run(
        [cluster.etcdctl, "member", "list", "-w", "simple"],
        env=cluster.etcdctl_env(),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert len(listed.stdout.strip().splitlines()) == 3


def test_write_through_one_member_is_read_through_another(cluster: EtcdCluster) -> None:
    first, second, third = cluster.members
    with cluster.gateway(first) as gw:
        revision = gw.put("/blixard-test/k", b"\x00value\xff")
    with cluster.gateway(third) as gw:
        assert gw.get("/blixard-test/k") == b"\x00value\xff"
    with cluster.gateway(second) as gw:
        assert int(gw.status()["header"]["revision"]) >= revision


def test_killing_the_leader_elects_another_and_writes_resume(cluster: EtcdCluster) -> None:
    old = cluster.leader()
    with cluster.gateway(old) as gw:
        gw.put("/blixard-test/before", "1")
    cluster.kill(old)
    assert not old.running

    new = cluster.leader(timeout=10)  # bounded wait: raises with the member logs if none
    assert new is not old
    survivors = cluster.running_members()
    assert len(survivors) == 2
    follower = next(m for m in survivors if m is not new)
    with cluster.gateway(follower) as gw:  # a write through a follower is forwarded
        gw.put("/blixard-test/after", "2")
    with cluster.gateway(new) as gw:
        assert gw.get("/blixard-test/before") == b"1"
        assert gw.get("/blixard-test/after") == b"2"


def test_a_killed_member_rejoins_after_restart(cluster: EtcdCluster) -> None:
    victim, survivor, other = cluster.members
    cluster.kill(victim)
    cluster.leader(timeout=10)  # the victim may have been the leader
    with cluster.gateway(survivor) as gw:
        for i in range(20):
            gw.put(f"/blixard-test/while-down/{i}", str(i))

    cluster.restart(victim)
    cluster.wait_healthy()
    assert len(cluster.running_members()) == 3
    with cluster.gateway(victim) as gw:
        # A serializable read answers from the member's own copy: it has caught up.
        for i in range(20):
            assert gw.get(f"/blixard-test/while-down/{i}", serializable=True) == str(i).encode()
    # The rejoined member is a full voter again: with another member down, it and the
    # survivor still form a quorum.
    cluster.kill(other)
    cluster.leader(timeout=10)
    with cluster.gateway(victim) as gw:
        gw.put("/blixard-test/after-second-failure", "ok")
