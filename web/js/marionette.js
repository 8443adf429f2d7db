// Marionette frontend extension: a status line under our nodes after each run
// (people found per frame, PoseAlign's fit, what LoadReference found), a colour for our nodes, and
// combo values saved by earlier versions replaced by their current keys when a graph is opened.
import { app } from "../../../scripts/app.js";

// Our nodes are the ones in our menu category (the Python side's NODE_CLASS_MAPPINGS is the one list).
const CATEGORY = "Marionette/";
// Input option holding {value saved by an earlier version: key} (nodes/combos.py LEGACY_OPTION).
const LEGACY_OPTION = "marionette_legacy_values";
// Our own socket types (nodes/socket_types.py); earlier versions saved them without the prefix.
const OWN_TYPE = "MARIONETTE_";
window.__marionette = { loaded: true, setup: false, seen: [], migrated: [] };
const OUR_DEFS = new Map(); // node type -> its definition, for our nodes

function legacyMaps(nodeData) {
  const maps = {};
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData.input?.[section] || {})) {
      const legacy = Array.isArray(spec) ? spec[1]?.[LEGACY_OPTION] : null;
      if (legacy && Object.keys(legacy).length) maps[name] = legacy;
    }
  }
  return maps;
}

function linkById(graph, id) {
  const links = graph?.links;
  return links?.get ? links.get(id) : links?.[id];
}

// A workflow saved by an earlier version holds our sockets' old type names: take them from the
// current definition, on the node's slots and on their links, so new connections fit again.
function migrateSlotTypes(node, nodeData) {
  const specs = { ...nodeData.input?.required, ...nodeData.input?.optional };
  const retype = (slot, type, linkIds) => {
    if (!slot || typeof type !== "string" || !type.startsWith(OWN_TYPE)) return;
    slot.type = type;
    for (const id of linkIds) {
      const link = id != null ? linkById(node.graph, id) : null;
      if (link) link.type = type;
    }
  };
  for (const input of node.inputs || []) retype(input, specs[input.name]?.[0], [input.link]);
  (nodeData.output || []).forEach((type, i) => retype(node.outputs?.[i], type, node.outputs?.[i]?.links || []));
}

function migrateWidgets(node, maps) {
  for (const widget of node.widgets || []) {
    const map = maps[widget.name];
    if (map && Object.prototype.hasOwnProperty.call(map, widget.value)) {
      const old = widget.value;
      widget.value = map[old];
      window.__marionette.migrated.push({ node: node.type, input: widget.name, from: old, to: widget.value });
    }
  }
}

function statusText(message) {
  if (message.marionette_people) {
    const [found, total] = message.marionette_people;
    return `person found in ${found} of ${total} frame${total === 1 ? "" : "s"}`;
  }
  if (message.marionette_fit) {
    const f = message.marionette_fit[0];
    const [sx, sy] = f.scale_px;
    return `driving body scaled ×${sx.toFixed(2)} (x) ×${sy.toFixed(2)} (y) in pixels; ` +
      `${f.keypoints} keypoints, ${f.frames} frames, residual ${f.residual_px.toFixed(1)} px` +
      (f.warnings && f.warnings.length ? `\nalignment ${f.trust === "stop" ? "untrustworthy" : "doubtful"}: ` +
        f.warnings.join("; ") : "");
  }
  if (message.marionette_body) {
    const b = message.marionette_body[0];
    return `${b.model} body fitted to ${b.frames} frame${b.frames === 1 ? "" : "s"}, ` +
      `reprojection error ${Number(b.reprojection_px).toFixed(1)} px` +
      (b.reprojection_relative >= 0 ? ` (${(100 * b.reprojection_relative).toFixed(1)}% of the body size)` : "") +
      (b.interpolated ? `; ${b.interpolated} frame(s) without a person interpolated` : "") +
      (b.parts ? "\n" + Object.entries(b.parts).map(([k, v]) => `${k} ${v}%`).join(", ") : "") +
      (b.warning ? `\n${b.warning}` : "");
  }
  if (message.marionette_svd) {
    const v = message.marionette_svd[0];
    const refine = v.face_refine ? `\nface refined at ${v.face_refine.steps_refined} steps, identity loss ` +
      `${Number(v.face_refine.loss_first).toFixed(3)} → ${Number(v.face_refine.loss_last).toFixed(3)}` : "";
    return `${v.frames} frames from ${v.model}` + refine + (v.warning ? `\n${v.warning}` : "");
  }
  if (message.marionette_motion) {
    const m = message.marionette_motion[0];
    return `${m.frames} motion fields (${m.method === "cmp" ? "CMP" : "embedded fallback"}), ` +
      `largest ${m.max_dense_px} px`;
  }
  if (message.marionette_keypoints) {
    const k = message.marionette_keypoints[0];
    return `${k.reference_points} reference keypoints with ${k.feature_channels}-d DIFT features, ${k.frames} frames`;
  }
  if (message.marionette_face_refine) {
    const r = message.marionette_face_refine[0];
    return `face boxes in ${r.frames_with_face} of ${r.frames} frames` + (r.tiny ? "; tiny random face model" : "");
  }
  if (message.marionette_face) {
    const f = message.marionette_face[0];
    return f.face ? `face found at [${f.box.join(", ")}], embedding norm ${f.embedding_norm}` : f.note;
  }
  if (message.marionette_reference) {
    const r = message.marionette_reference[0];
    return `${r.width}×${r.height}, person ${(100 * r.person_area).toFixed(0)}% of the frame, ` +
      (r.face ? "face found" : "no face found") + (r.note ? `\n${r.note}` : "");
  }
  if (message.marionette_vividpose) {
    const v = message.marionette_vividpose[0];
    return `VividPose, τ1 ${v.render_type} render, pose added ${v.pose_injection === "latent" ? "to the noisy latent" :
      "after conv_in"}` + (v.train_size ? `, trained at ${v.train_size}` : "") +
      (v.note ? `\n${v.note}` : "") + (v.warning ? `\n${v.warning}` : "");
  }
  if (message.text) return message.text.join("\n");  // Video Metrics' table
  return null;
}

function showStatus(node, text) {
  if (!node.__marionetteStatus) {
    const el = document.createElement("div");
    el.className = "marionette-status";
    el.style.cssText = "font: 11px monospace; color: #9fd; padding: 2px 6px; white-space: pre-wrap;";
    node.__marionetteStatus = el;
    if (node.addDOMWidget) node.addDOMWidget("marionette_status", "marionette_status", el, { serialize: false });
  }
  node.__marionetteStatus.textContent = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "marionette.nodes",
  async setup() {
    window.__marionette.setup = true;
  },
  // after a whole graph is loaded (the links exist now, whatever order the frontend builds them in)
  loadedGraphNode(node) {
    const nodeData = OUR_DEFS.get(node.type);
    if (nodeData) migrateSlotTypes(node, nodeData);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category?.startsWith(CATEGORY)) return;
    window.__marionette.seen.push(nodeData.name);
    OUR_DEFS.set(nodeData.name, nodeData);
    const maps = legacyMaps(nodeData);
    // configure() sets the saved slots and widget values, then calls onConfigure (graph load, paste, undo)
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const r = onConfigure?.apply(this, arguments);
      migrateWidgets(this, maps);
      migrateSlotTypes(this, nodeData);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = statusText(message || {});
      if (text) {
        showStatus(this, text);
        window.__marionette.lastStatus = text;
      }
    };
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = "#2a3b4d";
      this.bgcolor = "#1d2833";
      return r;
    };
  },
});
