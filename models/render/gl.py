"""A small headless OpenGL rasteriser for the guidance maps: one draw per frame gives the depth buffer,
the smooth camera-space normal and the nearest-corner part label of every pixel.

Why not pyrender's own renderer: it draws into a 4× multisampled framebuffer, whose resolve blends
colours along every edge (part labels would mix) and its 8-bit colour buffer cannot carry a
re-normalised normal. We take only the GL context from `pyrender.OffscreenRenderer` (it knows the
EGL / OSMesa / pyglet platforms) and draw with our own shader into a single-sample float
framebuffer: one sample per pixel centre, no anti-aliasing, deterministic bytes.
"""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from ..errors import MarionetteError

GL_FIX = ("Set PYOPENGL_PLATFORM=egl before starting Python (needs libEGL + Mesa: apt-get install libegl1 "
          "libgl1-mesa-dri; on NVIDIA, EGL_DEVICE_ID picks the GPU), or PYOPENGL_PLATFORM=osmesa "
          "(apt-get install libosmesa6, and PyOpenGL>=3.1.4: pip install PyOpenGL==3.1.10).")

# A GL context may be current in one thread at a time: every draw holds this lock.
GL_LOCK = threading.Lock()

VERTEX_SHADER = """
#version 330 core
layout(location = 0) in vec3 a_position;   // OpenCV camera space
layout(location = 1) in vec3 a_normal;     // OpenGL camera space
layout(location = 2) in vec3 a_corner;     // this corner's barycentric weights: (1,0,0), (0,1,0), (0,0,1)
layout(location = 3) in vec3 a_labels;     // the part labels of the triangle's three corners
uniform mat4 u_projection;
out vec3 v_normal;
out vec3 v_corner;
flat out vec3 v_labels;
void main() {
    gl_Position = u_projection * vec4(a_position, 1.0);
    v_normal = a_normal;
    v_corner = a_corner;
    v_labels = a_labels;
}
"""

# A pixel takes the label of the triangle corner it is nearest to (largest barycentric weight): the
# part borders run where Champ's interpolated vertex colours change over, yet nothing blends.
FRAGMENT_SHADER = """
#version 330 core
in vec3 v_normal;
in vec3 v_corner;
flat in vec3 v_labels;
out vec4 frag;
void main() {
    float len = length(v_normal);
    vec3 n = len > 1e-12 ? v_normal / len : vec3(0.0, 0.0, 1.0);
    float label = v_labels.x;
    if (v_corner.y > v_corner.x && v_corner.y >= v_corner.z) label = v_labels.y;
    else if (v_corner.z > v_corner.x && v_corner.z > v_corner.y) label = v_labels.z;
    frag = vec4(n, label + 1.0);
}
"""

CORNERS = np.eye(3, dtype=np.float32)
FLOATS_PER_VERTEX = 12


def import_pyrender():
    """pyrender, imported headless (EGL unless PYOPENGL_PLATFORM says otherwise)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import pyrender
    except Exception as e:  # ImportError, or the platform layer failing to load its library
        raise MarionetteError(f"pyrender cannot be imported ({type(e).__name__}: {e}).",
                              "pip install pyrender==0.1.45. " + GL_FIX) from e
    return pyrender


def projection_matrix(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                      near: float, far: float) -> np.ndarray:
    """OpenCV camera space → GL clip space for a pinhole camera. Image row 0 (top) lands at NDC y = +1,
    so rows read back with glReadPixels (bottom first) must be flipped."""
    a = (far + near) / (far - near)
    b = -2.0 * far * near / (far - near)
    return np.array([[2 * fx / width, 0.0, 2 * cx / width - 1.0, 0.0],
                     [0.0, -2 * fy / height, 1.0 - 2 * cy / height, 0.0],
                     [0.0, 0.0, a, b],
                     [0.0, 0.0, 1.0, 0.0]], np.float64)


def linear_depth(window_depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Depth-buffer values (0..1) → camera z in metres (float64)."""
    a = (far + near) / (far - near)
    b = -2.0 * far * near / (far - near)
    ndc = 2.0 * window_depth.astype(np.float64) - 1.0
    return b / np.minimum(ndc - a, -1e-300)


def corner_vertices(vertices_cv: np.ndarray, normals_gl: np.ndarray, faces: np.ndarray,
                    labels: np.ndarray) -> np.ndarray:
    """Unshared vertex stream [3F, 12]: position, normal, corner weights, the face's three labels."""
    f = len(faces)
    out = np.empty((f, 3, FLOATS_PER_VERTEX), np.float32)
    out[..., 0:3] = vertices_cv[faces]
    out[..., 3:6] = normals_gl[faces]
    out[..., 6:9] = CORNERS
    out[..., 9:12] = labels[faces][:, None, :]
    return out.reshape(-1, FLOATS_PER_VERTEX)


# The process's one GL context, created on first use and kept: pyrender's OffscreenRenderer.delete()
# calls eglTerminate on the display every EGL context of the process shares, which would kill any
# other live renderer's context, so contexts are never deleted while Python runs.
_SHARED: dict = {}


def shared_context():
    """pyrender's OffscreenRenderer holding the GL context (call with GL_LOCK held)."""
    offscreen = _SHARED.get("offscreen")
    if offscreen is None:
        pyrender = import_pyrender()
        try:
            offscreen = pyrender.OffscreenRenderer(16, 16)  # its size is unused: we draw into our own framebuffer
        except Exception as e:  # EGL / OSMesa / pyglet each raise their own error types
            raise MarionetteError(f"No headless OpenGL context could be created ({type(e).__name__}: {e}).",
                                  GL_FIX) from e
        _SHARED["offscreen"] = offscreen
    return offscreen


class Rasterizer:
    """A shader and a float framebuffer of `width`×`height` in the shared GL context. `draw` returns
    the raw buffers of one frame; close() frees the GL objects (the context stays for the next one)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self._gl_ids: dict = {}
        self._platform = None
        with GL_LOCK:
            platform = shared_context()._platform
            platform.make_current()
            try:
                self._setup()
            except Exception as e:
                self._delete_objects()
                raise MarionetteError(f"The OpenGL context cannot run the guidance shader ({type(e).__name__}: {e}).",
                                      "An OpenGL 3.3 core context is needed. " + GL_FIX) from e
            finally:
                platform.make_uncurrent()
            self._platform = platform

    # ------------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from OpenGL import GL
        from OpenGL.GL import shaders
        program = shaders.compileProgram(shaders.compileShader(VERTEX_SHADER, GL.GL_VERTEX_SHADER),
                                         shaders.compileShader(FRAGMENT_SHADER, GL.GL_FRAGMENT_SHADER))
        self._gl_ids["program"] = program
        self._gl_ids["vao"] = GL.glGenVertexArrays(1)
        self._gl_ids["vbo"] = GL.glGenBuffers(1)
        GL.glBindVertexArray(self._gl_ids["vao"])
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self._gl_ids["vbo"])
        stride = FLOATS_PER_VERTEX * 4
        for location in range(4):
            GL.glEnableVertexAttribArray(location)
            GL.glVertexAttribPointer(location, 3, GL.GL_FLOAT, GL.GL_FALSE, stride, ctypes.c_void_p(12 * location))
        GL.glBindVertexArray(0)
        colour, depth = GL.glGenRenderbuffers(2)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, colour)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_RGBA32F, self.width, self.height)
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, depth)
        GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT32F, self.width, self.height)
        self._gl_ids["renderbuffers"] = (colour, depth)
        fbo = GL.glGenFramebuffers(1)
        self._gl_ids["fbo"] = fbo
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, fbo)
        GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_RENDERBUFFER, colour)
        GL.glFramebufferRenderbuffer(GL.GL_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER, depth)
        status = GL.glCheckFramebufferStatus(GL.GL_FRAMEBUFFER)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
        if status != GL.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError(f"float framebuffer incomplete (status 0x{int(status):x})")

    # ------------------------------------------------------------------------------------- draw
    def draw(self, stream: np.ndarray, projection: np.ndarray,
             read_colour: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Draws the vertex stream; returns the depth buffer [H, W] float32 (1 = nothing) and, if asked,
        the colour buffer [H, W, 4] float32 (normal xyz, label + 1), both with row 0 at the image top."""
        if self._platform is None:
            raise MarionetteError("This guidance renderer was closed.", "Create a new GuidanceRenderer.")
        from OpenGL import GL
        w, h = self.width, self.height
        with GL_LOCK:
            self._platform.make_current()
            try:
                GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self._gl_ids["fbo"])
                GL.glViewport(0, 0, w, h)
                for cap in (GL.GL_BLEND, GL.GL_CULL_FACE, GL.GL_DITHER, GL.GL_MULTISAMPLE):
                    GL.glDisable(cap)
                GL.glEnable(GL.GL_DEPTH_TEST)
                GL.glDepthFunc(GL.GL_LESS)
                GL.glDepthMask(GL.GL_TRUE)
                GL.glClearColor(0.0, 0.0, 0.0, 0.0)
                GL.glClearDepth(1.0)
                GL.glClear(GL.GL_COLOR_BUFFER_BIT | GL.GL_DEPTH_BUFFER_BIT)
                GL.glUseProgram(self._gl_ids["program"])
                location = GL.glGetUniformLocation(self._gl_ids["program"], "u_projection")
                GL.glUniformMatrix4fv(location, 1, GL.GL_TRUE, np.ascontiguousarray(projection, np.float32))
                GL.glBindVertexArray(self._gl_ids["vao"])
                GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self._gl_ids["vbo"])
                data = np.ascontiguousarray(stream, np.float32)
                GL.glBufferData(GL.GL_ARRAY_BUFFER, data.nbytes, data, GL.GL_STREAM_DRAW)
                GL.glDrawArrays(GL.GL_TRIANGLES, 0, len(data))
                GL.glBindVertexArray(0)
                GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
                raw = GL.glReadPixels(0, 0, w, h, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT)
                depth = np.frombuffer(raw, np.float32).reshape(h, w)[::-1].copy()
                colour = None
                if read_colour:
                    raw = GL.glReadPixels(0, 0, w, h, GL.GL_RGBA, GL.GL_FLOAT)
                    colour = np.frombuffer(raw, np.float32).reshape(h, w, 4)[::-1].copy()
                GL.glUseProgram(0)
                GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, 0)
            finally:
                self._platform.make_uncurrent()
        return depth, colour

    # ---------------------------------------------------------------------------------- clean-up
    def close(self) -> None:
        """Frees this renderer's GL objects; safe to call twice."""
        platform, self._platform = getattr(self, "_platform", None), None
        if platform is None:
            return
        with GL_LOCK:
            platform.make_current()
            try:
                self._delete_objects()
            finally:
                platform.make_uncurrent()

    def _delete_objects(self) -> None:
        from OpenGL import GL
        ids, self._gl_ids = self._gl_ids, {}
        if "fbo" in ids:
            GL.glDeleteFramebuffers(1, [ids["fbo"]])
        if "renderbuffers" in ids:
            GL.glDeleteRenderbuffers(2, list(ids["renderbuffers"]))
        if "vbo" in ids:
            GL.glDeleteBuffers(1, [ids["vbo"]])
        if "vao" in ids:
            GL.glDeleteVertexArrays(1, [ids["vao"]])
        if "program" in ids:
            GL.glDeleteProgram(ids["program"])
