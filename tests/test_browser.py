"""Tier 3b: the real frontend (comfyui-frontend-package 1.32.9) in headless Chromium."""
import glob
import json
import os

import pytest
from harness import ROOT
from harness.browser import unexpected_failures
from harness.workflow import to_api
from test_host import OUR_NODES

WORKFLOWS = sorted(glob.glob(str(ROOT / "workflows" / "*.json")))
EXAMPLE_INPUTS = sorted(os.listdir(ROOT / "workflows" / "inputs"))


@pytest.fixture(scope="module")
def page(comfy_server, comfy_host):
    """The frontend of a ComfyUI as a user has it: the workflows' inputs are the ones the pack put into
    the input folder when it was imported, and no tiny test model is offered."""
    from harness.browser import frontend
    with frontend(comfy_server, OUR_NODES) as page_console_network:
        yield page_console_network


def test_the_pack_put_the_example_inputs_into_the_input_folder(comfy_server):
    assert EXAMPLE_INPUTS == ["marionette_driving.mp4", "marionette_reference.png"]
    for name in EXAMPLE_INPUTS:
        assert os.path.getsize(os.path.join(comfy_server.base, "input", name)) > 1000, name


def test_a_users_ui_offers_no_tiny_test_model(comfy_server):
    info = comfy_server.get("/object_info")
    for name in OUR_NODES:
        for spec in {**info[name]["input"]["required"], **info[name]["input"].get("optional", {})}.values():
            if isinstance(spec[0], list):
                assert not [c for c in spec[0] if "tiny" in str(c)], (name, spec[0])


def test_extension_runs_and_every_node_type_registers(page):
    p, console, network = page
    state = p.evaluate("""() => ({
        marionette: window.__marionette,
        extensions: (window.app.extensions || []).map(e => e.name),
    })""")
    assert state["marionette"]["loaded"] and state["marionette"]["setup"]
    assert "marionette.nodes" in state["extensions"]
    assert set(OUR_NODES) <= set(state["marionette"]["seen"])


def test_workflows_exist():
    assert any(w.endswith("pose_extraction.json") for w in WORKFLOWS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_loads_with_no_missing_node_types_or_failed_requests(page, path, comfy_host, comfy_server,
                                                                     artifacts_dir):
    p, console, network = page
    before = len(network)
    with open(path) as f:
        workflow = json.load(f)
    result = p.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const types = window.LiteGraph.registered_node_types;
        const nodes = window.app.graph._nodes;
        const missing = nodes.filter(n => !(n.type in types)).map(n => n.type);
        const prompt = await window.app.graphToPrompt();
        return {missing, count: nodes.length, output: prompt.output};
    }""", workflow)
    p.wait_for_timeout(500)
    p.screenshot(path=os.path.join(artifacts_dir, f"workflow_{os.path.basename(path)[:-5]}.png"))
    assert result["missing"] == [] and result["count"] == len(workflow["nodes"])
    # the previews of the example inputs load (a missing input file is a 404 per preview)
    assert unexpected_failures(network[before:], comfy_server.url) == []
    # our offline UI→API conversion (used by the demo) agrees with the frontend's own
    ours = to_api(workflow, comfy_host.nodes.NODE_CLASS_MAPPINGS)
    theirs = result["output"]
    assert {k: (v["class_type"], v["inputs"]) for k, v in ours.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in theirs.items()}


def test_pose_workflow_queued_from_the_ui_runs(page, comfy_server, artifacts_dir):
    p, console, network = page
    path = str(ROOT / "workflows" / "pose_extraction.json")
    with open(path) as f:
        workflow = json.load(f)
    status = p.evaluate("""async (wf) => {
        await window.app.loadGraphData(wf);
        const before = Object.keys(await (await fetch('/api/history')).json()).length;
        await window.app.queuePrompt(0, 1);
        for (let i = 0; i < 600; i++) {
          await new Promise(r => setTimeout(r, 250));
          const h = await (await fetch('/api/history')).json();
          if (Object.keys(h).length > before) return Object.values(h).pop().status;
        }
        return null;
    }""", workflow)
    p.wait_for_timeout(1500)
    p.screenshot(path=os.path.join(artifacts_dir, "pose_workflow_run.png"))
    assert status and status["status_str"] == "success", status
    last = p.evaluate("() => window.__marionette.lastStatus")
    assert last
    from harness.browser import unexpected_errors
    assert unexpected_errors(console) == []
    assert unexpected_failures(network, comfy_server.url) == []  # from the first page load on
