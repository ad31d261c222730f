"""Doctor's ``mesh`` area (wgagent/doctor/mesh_findings.py): this node's row of ``wgagent mesh``,
from the Node list doctor already reads, in named cases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_doctor import CLUSTER, NOW, healthy, node_anns
from wgagent.config import Config, MeshConfig
from wgagent.doctor import Skipped, diagnose
from wgagent.doctor.facts import KubeFacts
from wgagent.doctor.mesh_findings import check_mesh
from wgagent.mesh import report as rp
from wgagent.model import ClusterView, NodeInfo

UP = rp.Report(at=int(NOW) - 20, interface="flannel-wg", counts={"peers": 1, "ok": 1})


def cluster(**reports: rp.Report | None) -> ClusterView:
    nodes = {}
    for i, name in enumerate(("n1", "n2", "n3"), start=1):
        anns = node_anns(i, f"198.51.100.{i}")
        report = reports.get(name, UP)
        if report is not None:
            anns[rp.ANNOTATION] = rp.encode(report)
        nodes[name] = NodeInfo(name, anns)
    return ClusterView(nodes)


def with_cluster(view: ClusterView | None) -> list[tuple[str, str, str]]:
    kube = KubeFacts("own", "list", None, None, view, None)
    return [(f.severity, f.title, f.fix) for f in check_mesh(healthy(kube=kube))]


DOWN_N3 = rp.Note("n3", wg="down", wg_since=int(NOW) - 300, hears=True)
NO_IF = replace(UP, interface_ok=False, interface_detail="no interface flannel-wg")


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        ({}, [("ok", "every pair from and to n1 is ok (3 nodes)", "")]),
        ({"n1": None, "n2": None, "n3": None},
         [("info", "no node publishes a mesh report yet (wgagent runs nowhere, or is too old)", "")]),
        ({"n1": None},
         [("warn", "this node's mesh report is missing: its row of the mesh is unknown",
           "systemctl enable --now wgagent")]),
        ({"n1": replace(UP, notes=(DOWN_N3,))},
         [("warn", "n1 -> n3: down (inbound-blocked-upstream)",
           "open UDP 51820 inbound from 198.51.100.1 in the cloud firewall or security group in front of n3 (likely: "
           "it hears nothing while its peer hears it)")]),
        ({"n2": NO_IF},
         [("warn", "n1 -> n2: down (no-interface)", "n2 has no WireGuard interface: restart k3s there (flannel "
           "creates flannel-wg), see `wgagent doctor`")]),
        ({"n3": replace(UP, notes=(replace(DOWN_N3, node="n2"),))},
         [("ok", "every pair from and to n1 is ok (3 nodes); 2 pairs between other nodes are not ok (wgagent mesh)",
           "")]),
        ({"n1": NO_IF},
         [("problem", "n1 -> n2: down (no-interface)", "n1 has no WireGuard interface: restart k3s there (flannel "
           "creates flannel-wg), see `wgagent doctor`"),
          ("problem", "n1 -> n3: down (no-interface)", "n1 has no WireGuard interface: restart k3s there (flannel "
           "creates flannel-wg), see `wgagent doctor`"),
          ("problem", "n2 -> n1: down (no-interface)", "n1 has no WireGuard interface: restart k3s there (flannel "
           "creates flannel-wg), see `wgagent doctor`"),
          ("problem", "n3 -> n1: down (no-interface)", "n1 has no WireGuard interface: restart k3s there (flannel "
           "creates flannel-wg), see `wgagent doctor`"),
          ("problem", "n1: no-interface", "n1 has no WireGuard interface (no interface flannel-wg): restart k3s there "
           "(flannel creates flannel-wg), see `wgagent doctor`")]),
    ],
    ids=["all ok", "nobody reports", "this node does not report", "a pair fixed elsewhere", "a node fault elsewhere",
         "a pair elsewhere", "a fault here"],
)  # fmt: skip
def test_this_nodes_row(reports: dict[str, rp.Report | None], expected: list[tuple[str, str, str]]) -> None:
    assert with_cluster(cluster(**reports)) == expected


def test_without_the_node_list_or_with_the_mesh_off() -> None:
    assert with_cluster(None) == [("info", "could not read the mesh reports", "")]  # the kubernetes area says why
    skipped = check_mesh(healthy(kube=Skipped("kube.enabled is false")))
    assert [(f.severity, f.title, f.detail) for f in skipped] == [
        ("info", "could not read the mesh reports", "kube.enabled is false")
    ]
    off = check_mesh(healthy(cfg=Config(node_name="n1", mesh=MeshConfig(enabled=False))))
    assert [(f.severity, f.title) for f in off] == [("info", "mesh health is off (mesh.enabled: false)")]


def test_doctor_includes_the_mesh_area() -> None:
    findings = diagnose(healthy(kube=KubeFacts("own", "list", None, None, cluster(), None)))
    assert [f.title for f in findings if f.area == "mesh"] == ["every pair from and to n1 is ok (3 nodes)"]
    assert CLUSTER.nodes  # the default facts' cluster has no reports: only information
    assert [f.severity for f in diagnose(healthy()) if f.area == "mesh"] == ["info"]
