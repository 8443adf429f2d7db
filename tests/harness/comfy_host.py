"""A real ComfyUI loaded in this process, with Marionette as a custom node, running API prompts
through the real validator and executor (no HTTP server).

ComfyUI keeps global state, so there is one host per process (`ComfyHost.get`).
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "marionette"


@dataclass
class RunResult:
    success: bool
    ui: dict                       # node id → ui dict
    messages: list = field(default_factory=list)
    executor: object = None

    def output(self, node_id: str, slot: int = 0):
        """The real value (tensor, list…) a node produced on an output slot."""
        entry = self.executor.caches.outputs.get(str(node_id))
        return None if entry is None else entry.outputs[slot][0]

    @property
    def error(self) -> dict | None:
        for kind, data in self.messages:
            if kind == "execution_error":
                return data
        return None


class PromptRejected(Exception):
    def __init__(self, error, node_errors):
        self.error, self.node_errors = error, node_errors
        super().__init__(f"{error} {node_errors}")


class ComfyHost:
    _instance: "ComfyHost | None" = None

    @classmethod
    def get(cls, comfy_dir: str | None = None, base_dir: str | None = None) -> "ComfyHost":
        if cls._instance is None:
            cls._instance = cls(comfy_dir or os.environ["MARIONETTE_COMFY"], base_dir)
        return cls._instance

    def __init__(self, comfy_dir: str, base_dir: str | None):
        self.comfy_dir = os.path.abspath(comfy_dir)
        self.base = base_dir or tempfile.mkdtemp(prefix="marionette_comfy_")
        os.makedirs(os.path.join(self.base, "custom_nodes"), exist_ok=True)
        link = os.path.join(self.base, "custom_nodes", PACK_NAME)
        if not os.path.exists(link):
            os.symlink(PACK_ROOT, link)
        sys.path.insert(0, self.comfy_dir)
        # argument values must be in place before anything imports folder_paths / model_management
        import comfy.options  # noqa: F401
        from comfy.cli_args import args
        args.cpu = True
        args.base_directory = self.base
        args.disable_api_nodes = True
        args.database_url = "sqlite:///:memory:"
        import folder_paths
        # main.py's import order: `utils` must resolve to ComfyUI/utils before nodes.py shadows it
        import utils.extra_config  # noqa: F401
        import comfy.model_management  # noqa: F401
        import execution
        import server
        import nodes
        self.folder_paths, self.execution, self.nodes = folder_paths, execution, nodes
        for kind in ("input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base, kind), exist_ok=True)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.server = server.PromptServer(self.loop)
        self.failed_extras = self.loop.run_until_complete(
            nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))

    @property
    def input_dir(self) -> str:
        return self.folder_paths.get_input_directory()

    @property
    def output_dir(self) -> str:
        return self.folder_paths.get_output_directory()

    def node_class(self, name: str):
        return self.nodes.NODE_CLASS_MAPPINGS[name]

    def run_with_progress_hook(self, prompt: dict, hook) -> RunResult:
        """`run` with ComfyUI's global progress hook set to `hook(value, total, preview, node_id=None)` (it may
        interrupt); the hook and the interrupt flag are cleared afterwards."""
        import comfy.model_management as mm
        import comfy.utils
        comfy.utils.set_progress_bar_global_hook(hook)
        try:
            return self.run(prompt)
        finally:
            comfy.utils.set_progress_bar_global_hook(None)
            mm.interrupt_current_processing(False)

    def run_with_latent_previews(self, prompt: dict) -> tuple[RunResult, list]:
        """`run` with ComfyUI's latent2rgb previews on; also returns every (value, total, preview) the
        progress bars reported."""
        from comfy.cli_args import LatentPreviewMethod, args
        reports, before = [], args.preview_method
        args.preview_method = LatentPreviewMethod.Latent2RGB
        try:
            result = self.run_with_progress_hook(
                prompt, lambda value, total, preview, node_id=None: reports.append((value, total, preview)))
        finally:
            args.preview_method = before
        return result, reports

    def run(self, prompt: dict) -> RunResult:
        """Validates and executes an API-format prompt; raises PromptRejected if validation fails."""
        pid = str(uuid.uuid4())
        valid, error, outputs, node_errors = self.loop.run_until_complete(
            self.execution.validate_prompt(pid, prompt, None))
        if not valid:
            raise PromptRejected(error, node_errors)
        ex = self.execution.PromptExecutor(self.server, cache_type=self.execution.CacheType.CLASSIC,
                                           cache_args={"lru": 0, "ram": 0})
        self.loop.run_until_complete(ex.execute_async(prompt, pid, {}, outputs))
        return RunResult(ex.success, dict(ex.history_result.get("outputs", {})), list(ex.status_messages), ex)
