"""Tier 2, StableAnimator face identity: IDAdapterApply -> SVDAnimateSampler in the real host with the tiny
StableAnimator model, the tiny random face encoder and a fake antelopev2 pack (tests/insightface_fixture.py)
written into the host's models/insightface/models/antelopev2; plus unit tests of the embedding path (raw
ArcFace embedding into the Face Encoder, BGR into insightface)."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from insightface_fixture import face_image, write_antelopev2

TINY = "tiny random (no download, testing only)"
TINY_FACE = "tiny random (testing only)"
ZEROS = "zeros, as the official code"
SIZE, FRAMES = 64, 4


# ------------------------------------------------------------------------------------------- unit
@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    write_antelopev2(str(root))
    return str(root)


def test_insightface_gets_bgr_and_the_encoder_gets_the_raw_embedding(pack_root):
    from insightface.app import FaceAnalysis

    from marionette.models.stableanimator.face_id import FaceEmbedder, face_tokens
    embedder = FaceEmbedder(pack_root, providers=["CPUExecutionProvider"]).prepare()
    seen = []
    real_get = embedder.app.get
    embedder.app.get = lambda image, **kw: seen.append(image.copy()) or real_get(image, **kw)
    rgb = face_image()
    embedding, box = embedder.largest_face_embedding(rgb)
    assert np.array_equal(seen[0], rgb[:, :, ::-1])  # channels swapped to BGR for insightface
    # independent run of insightface on the BGR image: we return its raw, not its unit-length, vector
    app = FaceAnalysis(name="antelopev2", root=pack_root, providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    faces = app.get(np.ascontiguousarray(rgb[:, :, ::-1]))
    largest = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    np.testing.assert_allclose(embedding, largest.embedding, rtol=1e-6)
    np.testing.assert_allclose(box, largest.bbox, rtol=1e-6)
    assert abs(float(np.linalg.norm(embedding)) - 1.0) > 0.5
    rgb_embedding = app.get(rgb)[0].embedding  # what the official inference scripts' channel swap gives
    assert not np.allclose(embedding, rgb_embedding, atol=1e-3)

    class Spy(torch.nn.Module):
        def forward(self, id_embeds, clip_embeds):
            self.id_embeds = id_embeds
            return torch.zeros(1, 4, clip_embeds.shape[-1])

    spy = Spy()
    face_tokens(spy, embedding, torch.zeros(1, 1, 24))
    np.testing.assert_array_equal(spy.id_embeds[0].numpy(), embedding)
    face_tokens(spy, None, torch.zeros(1, 1, 24))  # no face: zeros(512), as the official code
    assert spy.id_embeds.shape == (1, 512) and not spy.id_embeds.any()
    assert embedder.largest_face_embedding(face_image(face=False)) == (None, None)


def test_missing_pack_names_folder_files_and_source(tmp_path):
    from marionette.models.errors import MarionetteError
    from marionette.models.stableanimator.face_id import FaceEmbedder
    with pytest.raises(MarionetteError) as caught:
        FaceEmbedder(str(tmp_path))
    message = str(caught.value)
    assert "models/insightface/models/antelopev2" in message and "insightface" in message
    for name in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"):
        assert name in message


# ------------------------------------------------------------------------------------------- host
@pytest.fixture
def antelopev2(comfy_host):
    import folder_paths
    root = os.path.join(folder_paths.models_dir, "insightface")
    folder = write_antelopev2(root)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def references(comfy_host):
    names = {}
    for face in (True, False):
        names[face] = f"marionette_id_{'face' if face else 'noface'}.png"
        Image.fromarray(face_image(SIZE, face)).save(os.path.join(comfy_host.input_dir, names[face]))
    return names


def id_prompt(reference, animation="StableAnimator", with_id=True, no_face="error"):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": FRAMES}},
        "10": {"class_type": "SVDAnimationLoader", "inputs": {"svd_folder": TINY, "animation": animation,
                                                             "checkpoint": "Animation/unet.pth", "dtype": "auto"}},
        "11": {"class_type": "IDAdapterApply", "inputs": {"model": ["10", 0], "reference_image": ["1", 0],
                                                         "face_encoder": TINY_FACE, "face_analysis": "antelopev2",
                                                         "no_face": no_face}},
        "12": {"class_type": "SVDAnimateSampler", "inputs": {
            "model": ["11" if with_id else "10", 0], "reference_image": ["1", 0], "pose_images": ["3", 0],
            "steps": 2, "cfg_min": 1.5, "cfg_max": 2.5, "fps": 7, "motion_bucket_id": 127,
            "noise_aug_strength": 0.02, "tile_size": FRAMES, "tile_overlap": 1, "seed": 5, "decode_chunk": 2}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}},
    }
    if not with_id:
        del prompt["11"]
    return prompt


def test_face_tokens_change_the_video(comfy_host, antelopev2, references):
    with_id = comfy_host.run(id_prompt(references[True]))
    assert with_id.success, with_id.error
    without = comfy_host.run(id_prompt(references[True], with_id=False))
    assert without.success, without.error
    frames = with_id.output("12", 0)
    assert tuple(frames.shape) == (FRAMES, SIZE, SIZE, 3) and torch.isfinite(frames).all()
    assert not torch.equal(with_id.output("12", 1)["samples"], without.output("12", 1)["samples"])
    face = with_id.ui["11"]["marionette_face"][0]
    assert face["face"] and len(face["box"]) == 4 and face["embedding_norm"] > 2  # the raw, not unit, vector
    assert with_id.ui["12"]["marionette_svd"][0]["face_id"]
    assert not without.ui["12"]["marionette_svd"][0]["face_id"]
    again = comfy_host.run(id_prompt(references[True]))  # same seed, same face: same video
    assert torch.equal(with_id.output("12", 1)["samples"], again.output("12", 1)["samples"])
    # the antelopev2 sessions are registered with ComfyUI, and its unload_all_models drops them
    import gc
    import weakref

    import comfy.model_management as mm
    holders = [entry.model.model for entry in mm.current_loaded_models
               if type(getattr(entry.model, "model", None)).__name__ == "SessionHolder"]
    assert len(holders) == 1 and holders[0].value is not None
    gone = weakref.ref(holders.pop())
    mm.unload_all_models()
    gc.collect()
    assert gone() is None


def test_no_face_errors_or_uses_zeros(comfy_host, antelopev2, references):
    failed = comfy_host.run(id_prompt(references[False]))
    assert not failed.success
    message = failed.error["exception_message"]
    assert "no face found in the reference image" in message.lower() and "no_face" in message
    zeros = comfy_host.run(id_prompt(references[False], no_face=ZEROS))
    assert zeros.success, zeros.error
    face = zeros.ui["11"]["marionette_face"][0]
    assert not face["face"] and "zero face embedding" in face["note"]
    assert torch.isfinite(zeros.output("12", 0)).all()


def test_missing_antelopev2_folder_is_named(comfy_host, references):
    import folder_paths
    shutil.rmtree(os.path.join(folder_paths.models_dir, "insightface", "models", "antelopev2"), ignore_errors=True)
    result = comfy_host.run(id_prompt(references[True]))
    assert not result.success
    message = result.error["exception_message"]
    assert "ComfyUI/models/insightface/models/antelopev2" in message
    assert "glintr100.onnx" in message and "scrfd_10g_bnkps.onnx" in message and "1k3d68.onnx" in message
    assert comfy_host.run(id_prompt(references[True], with_id=False)).success  # the host keeps serving


def test_mimicmotion_model_is_refused(comfy_host, antelopev2, references):
    result = comfy_host.run(id_prompt(references[True], animation="MimicMotion"))
    assert not result.success
    message = result.error["exception_message"]
    assert "StableAnimator" in message and "mimicmotion" in message
