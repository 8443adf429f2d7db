"""Tier 3b: the real frontend (comfyui-frontend-package 1.32.9) in headless Chromium."""
import glob
import json
import os

import pytest
from harness import ROOT
from harness.media import write_media
from harness.workflow import to_api
from test_host import OUR_NODES

WORKFLOWS = sorted(glob.glob(str(ROOT / "workflows" / "*.json")))


@pytest.fixture(scope="module")
def page(comfy_server, comfy_host, synthetic):
    write_media(os.path.join(comfy_server.base, "input"), synthetic)
    from harness.browser import frontend
    with frontend(comfy_server, OUR_NODES) as (page, console):
        yield page, console


def test_extension_runs_and_every_node_type_registers(page):
    p, console = page
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
def test_workflow_loads_with_no_missing_node_types(page, path, comfy_host, artifacts_dir):
    p, console = page
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
    # our offline UI→API conversion (used by the demo) agrees with the frontend's own
    ours = to_api(workflow, comfy_host.nodes.NODE_CLASS_MAPPINGS)
    theirs = result["output"]
    assert {k: (v["class_type"], v["inputs"]) for k, v in ours.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in theirs.items()}


def test_pose_workflow_queued_from_the_ui_runs(page, comfy_server, artifacts_dir):
    p, console = page
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
