"""Runs Marionette's nodes in a 2024 ComfyUI (commit a28a9dc, March 2024), in this process.

    python -m harness.host2024 COMFY_2024_DIR PROMPT_JSON INPUT_FILE...

That host has the older V1-only API: sync `init_custom_nodes`, one-argument `validate_prompt`,
`PromptExecutor(server).execute`, no --base-directory. It cannot share a process with the 2025 host
(both are the modules `comfy`, `nodes`, `server`…), so tests run this as a subprocess. Prints one JSON
line: {"ok", "nodes", "error", "outputs": {node id: ui}}.
"""
import asyncio
import json
import os
import shutil
import sys
import tempfile

from . import ROOT


def main(comfy_dir: str, prompt_file: str, inputs: list[str]) -> dict:
    base = tempfile.mkdtemp(prefix="marionette_comfy2024_")
    for kind in ("custom_nodes", "input", "output", "temp"):
        os.makedirs(os.path.join(base, kind))
    os.symlink(ROOT, os.path.join(base, "custom_nodes", "marionette"))
    for path in inputs:
        shutil.copy(path, os.path.join(base, "input"))
    sys.path.insert(0, comfy_dir)
    import comfy.options  # noqa: F401  (argument parsing stays off)
    from comfy.cli_args import args
    args.cpu = True
    import folder_paths
    folder_paths.folder_names_and_paths["custom_nodes"] = ([os.path.join(base, "custom_nodes")], set())
    folder_paths.set_output_directory(os.path.join(base, "output"))
    folder_paths.set_temp_directory(os.path.join(base, "temp"))
    folder_paths.set_input_directory(os.path.join(base, "input"))
    import execution
    import server
    import nodes
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    prompt_server = server.PromptServer(loop)
    nodes.init_custom_nodes()
    ours = sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if "marionette" in v.__module__)
    with open(prompt_file) as f:
        prompt = json.load(f)
    valid, error, outputs, node_errors = execution.validate_prompt(prompt)
    if not valid:
        return {"ok": False, "nodes": ours, "error": {"validation": error, "nodes": node_errors}}
    executor = execution.PromptExecutor(prompt_server)
    executor.execute(prompt, "marionette-2024", {}, outputs)
    failure = next((data for kind, data in executor.status_messages if kind == "execution_error"), None)
    return {"ok": executor.success, "nodes": ours, "error": failure and failure.get("exception_message"),
            "outputs": executor.outputs_ui}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3:]), default=str))
