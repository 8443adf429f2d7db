"""Tier 3a: the real ComfyUI server (main.py --cpu) over HTTP and websocket."""
import asyncio
import json
import os
import uuid

import aiohttp
import pytest
from harness.media import write_media
from test_host import OUR_NODES, pose_node


def run_over_ws(server, prompt, timeout=240):
    """POSTs a prompt and collects websocket events until it finishes."""
    async def go():
        client = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={client}") as ws:
                async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                    body = await r.json()
                    assert r.status == 200, body
                pid, events = body["prompt_id"], []
                while True:
                    msg = await ws.receive(timeout=timeout)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary preview frames
                    event = json.loads(msg.data)
                    events.append(event)
                    if event["type"] in ("execution_success", "execution_error") and event["data"]["prompt_id"] == pid:
                        return pid, events
    return asyncio.run(go())


@pytest.fixture(scope="module")
def server_media(comfy_server, synthetic):
    return write_media(os.path.join(comfy_server.base, "input"), synthetic)


def test_object_info_lists_every_marionette_node(comfy_server):
    info = comfy_server.get("/object_info")
    for name in OUR_NODES:
        assert info[name]["python_module"] == "custom_nodes.marionette", name
        assert info[name]["category"].startswith("Marionette")
    assert "reference_image" in info["LoadReference"]["input"]["optional"]
    assert comfy_server.get("/system_stats")["system"]["comfyui_version"] == "0.3.75"


def test_web_extension_is_served(comfy_server):
    scripts = comfy_server.get("/extensions")
    assert "/extensions/marionette/js/marionette.js" in scripts
    assert b"registerExtension" in comfy_server.get("/extensions/marionette/js/marionette.js", raw=True)


def test_prompt_runs_with_websocket_progress(comfy_server, server_media):
    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"file": server_media["video_file"]}},
              "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
              "3": pose_node(["2", 0]),
              "4": {"class_type": "SavePoseKeypoint", "inputs": {"pose_keypoint": ["3", 0],
                                                                "filename_prefix": "server/pose"}}}
    pid, events = run_over_ws(comfy_server, prompt)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "execution_success"
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == "3"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 8
    executed = [e["data"] for e in events if e["type"] == "executed" and e["data"]["node"] == "3"]
    assert executed[0]["output"]["marionette_people"] == [8, 8]
    history = comfy_server.get(f"/history/{pid}")[pid]
    assert history["status"]["status_str"] == "success"
    saved = history["outputs"]["4"]["marionette_files"][0]
    data = json.loads(comfy_server.get(f"/view?filename={saved['filename']}&subfolder={saved['subfolder']}"
                                       "&type=output", raw=True))
    assert len(data) == 8 and len(data[0]["people"]) == 1


def test_invalid_prompt_is_rejected_with_node_errors(comfy_server):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "2": pose_node(["1", 0], backend="no such backend"),
              "3": {"class_type": "SavePoseKeypoint", "inputs": {"pose_keypoint": ["2", 0], "filename_prefix": "x"}}}
    status, body = comfy_server.post("/prompt", {"prompt": prompt})
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert "backend" in json.dumps(body["node_errors"]["2"])


def test_failing_node_reports_and_server_keeps_serving(comfy_server):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "2": pose_node(["1", 0], backend="DWPose (ONNX)"),
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}
    _, events = run_over_ws(comfy_server, prompt)
    error = events[-1]
    assert error["type"] == "execution_error"
    assert "dw-ll_ucoco_384.onnx" in error["data"]["exception_message"] or \
        "yolox_l.onnx" in error["data"]["exception_message"]
    assert error["data"]["node_type"] == "DWPoseExtract"
    ok = {"1": prompt["1"], "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    _, events = run_over_ws(comfy_server, ok)
    assert events[-1]["type"] == "execution_success"
