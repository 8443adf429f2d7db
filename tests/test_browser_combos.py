"""Tier 3b: in the real frontend, our web extension finds exactly our nodes (by category) and replaces
combo values and socket type names saved by earlier versions with the current ones when a workflow is
opened."""
import copy
import json

import pytest
from harness import ROOT
from harness.workflow import to_api
from test_host import OUR_NODES

# as an earlier version saved them: widget position -> old value
OLD_WIDGETS = {
    "LoadReference": {2: "crop person"},
    "DWPoseExtract": {0: "embedded (BlazePose)", 4: "OpenPose"},
    "PoseAlign": {0: "StableAnimator"},
}
EXPECTED = {"LoadReference": {"fit": "crop_person"}, "DWPoseExtract": {"backend": "blazepose", "draw_style": "openpose"},
            "PoseAlign": {"draw_style": "stableanimator"}}


@pytest.fixture(scope="module")
def page(comfy_server, comfy_host):
    from harness.browser import frontend
    with frontend(comfy_server, OUR_NODES) as opened:
        yield opened[0]


def test_the_extension_finds_exactly_our_nodes_by_category(page):
    seen = page.evaluate("() => window.__marionette.seen")
    assert sorted(seen) == sorted(OUR_NODES)


def test_old_combo_values_become_keys_when_a_workflow_opens(page, comfy_host):
    with open(ROOT / "workflows" / "pose_extraction.json") as f:
        current = json.load(f)
    old = copy.deepcopy(current)
    for node in old["nodes"]:
        for position, value in OLD_WIDGETS.get(node["type"], {}).items():
            node["widgets_values"][position] = value
    result = page.evaluate("""async (wf) => {
        window.__marionette.migrated = [];
        await window.app.loadGraphData(wf);
        const prompt = await window.app.graphToPrompt();
        return {output: prompt.output, migrated: window.__marionette.migrated};
    }""", old)
    moved = {(m["node"], m["input"], m["from"], m["to"]) for m in result["migrated"]}
    assert ("DWPoseExtract", "backend", "embedded (BlazePose)", "blazepose") in moved
    for node in result["output"].values():
        for name, key in EXPECTED.get(node["class_type"], {}).items():
            assert node["inputs"][name] == key, (node["class_type"], name)
    # apart from the rewritten values, the graph the frontend queues is the saved one
    ours = to_api(old, comfy_host.nodes.NODE_CLASS_MAPPINGS)
    for node_id, node in ours.items():
        node["inputs"].update(EXPECTED.get(node["class_type"], {}))
        assert result["output"][node_id]["inputs"] == node["inputs"], node_id


def test_old_socket_type_names_become_ours_when_a_workflow_opens(page):
    # a workflow of an earlier version: our socket types without the prefix
    with open(ROOT / "workflows" / "champ_guidance.json") as f:
        champ = f.read()
    old_types = json.loads(champ.replace('"MARIONETTE_BODY_SEQUENCE"', '"BODY_SEQUENCE"'))
    types = page.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const graph = window.app.graph;
        const link = (id) => graph.links.get ? graph.links.get(id) : graph.links[id];
        const fit = graph._nodes.filter(n => n.type === "SMPLXFit");
        return {slots: fit.map(n => n.outputs[0].type),
                links: fit.flatMap(n => n.outputs[0].links.map(id => link(id).type))};
    }""", old_types)
    assert set(types["slots"]) == set(types["links"]) == {"MARIONETTE_BODY_SEQUENCE"}, types
