"""First use of the Anny body model inside ComfyUI: anny's data is built (once, 1-3 minutes, unless
install.py did it) with the node's progress bar, a status line on the node and a working Cancel."""
from __future__ import annotations

import logging

from ..models.body.anny_data import STEPS, anny_data_ready, build_anny_data
from .host import Progress, check_interrupt

logger = logging.getLogger("marionette")


def _status_line(node_id: str | None):
    """A function showing a text line on the running node (newer hosts), or doing nothing."""
    try:
        from server import PromptServer
        server = PromptServer.instance
        send = server.send_progress_text
    except (ImportError, AttributeError):
        return lambda text: None

    def show(text: str) -> None:
        target = node_id or _running_node_id(server)
        if target is not None:
            send(text, target)
    return show


def _running_node_id(server) -> str | None:
    """The node being executed, as ComfyUI's own progress hook finds it."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        get_executing_context = lambda: None  # noqa: E731  (older hosts)
    context = get_executing_context()
    return context.node_id if context is not None else getattr(server, "last_node_id", None)


def prepare_anny(node_id: str | None = None) -> None:
    """Builds anny's data if this ComfyUI has none yet; Cancel stops the build and leaves no partial files."""
    if anny_data_ready():
        return
    bar, status, shown = Progress(STEPS, node_id), _status_line(node_id), [-1]

    def on_progress(done: int, total: int) -> None:
        check_interrupt()
        if done != shown[0]:
            shown[0] = done
            bar(done, total)
            status(f"Building the Anny body model data (first use only): {100 * done // total}%")

    build_anny_data(on_progress=on_progress, log=lambda line: logger.info("[Marionette] %s", line))
    status("")
