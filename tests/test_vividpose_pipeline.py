"""The tiny VividPose through the pipeline layer on the shared SVD sampler: shapes, determinism, what
the conditional and unconditional passes see, windows, cancel and previews."""
import pytest
import torch

from marionette.models.errors import MarionetteError
from marionette.models.pipelines import vividpose as pipeline
from marionette.models.pipelines.vividpose import animate_vividpose, tiny_vividpose_animation
from marionette.models.svd.sampler import SamplerSettings

SIZE, FRAMES = 64, 5
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net():
    return tiny_vividpose_animation()


def _inputs(seed=0, frames=FRAMES):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(1, SIZE, SIZE, 3, generator=gen), torch.rand(frames, SIZE, SIZE, 3, generator=gen),
            torch.rand(frames, SIZE, SIZE, 3, generator=gen))


def _settings(**kw):
    values = dict(steps=2, cfg_min=1.0, cfg_max=2.5, tile_size=4, tile_overlap=1, seed=3)
    values.update(kw)
    return SamplerSettings(**values)


def test_tiny_vividpose_animates_deterministically_with_windows_and_previews(net):
    reference, skeleton, render = _inputs()
    previews = []
    result = animate_vividpose(net, reference, skeleton, render, _settings(), device=CPU,
                               face_embedding=torch.randn(512),
                               on_step=lambda d, t, x: previews.append((d, t, x.shape)))
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3) and result.latents.shape == (FRAMES, 4, 8, 8)
    assert 0 <= float(result.frames.min()) and float(result.frames.max()) <= 1
    assert previews == [(1, 2, (FRAMES, 4, 8, 8)), (2, 2, (FRAMES, 4, 8, 8))]
    again = animate_vividpose(net, reference, skeleton, render, _settings(), device=CPU,
                              face_embedding=torch.randn(512, generator=torch.Generator().manual_seed(9)))
    other_pose = animate_vividpose(net, reference, skeleton.flip(1), render, _settings(), device=CPU)
    same = animate_vividpose(net, reference, skeleton.flip(1), render, _settings(), device=CPU)
    assert torch.equal(other_pose.frames, same.frames)
    assert (other_pose.latents - result.latents).abs().max() > 1e-4
    assert (again.latents - result.latents).abs().max() > 1e-5  # the face embedding matters


def test_conditional_pass_sees_the_reference_the_unconditional_one_does_not(net, monkeypatch):
    seen = []
    original = pipeline._Denoiser.__call__

    def spy(self, sample_in, timestep, encoder_hidden_states, added_time_ids, pose_features=None, return_dict=False):
        conditional = encoder_hidden_states is self.cond
        processors = self.model._reference_processors.values()
        seen.append((conditional, pose_features is not None, sample_in[:, :, 4:].abs().max().item() > 0,
                     encoder_hidden_states.abs().max().item() > 0))
        out = original(self, sample_in, timestep, encoder_hidden_states, added_time_ids, pose_features, return_dict)
        assert all(p.reference is None for p in processors)  # installed for one call only
        return out

    monkeypatch.setattr(pipeline._Denoiser, "__call__", spy)
    reference, skeleton, render = _inputs()
    animate_vividpose(net, reference, skeleton, render, _settings(steps=1), device=CPU)
    assert {s for s in seen if s[0]} == {(True, True, True, True)}
    assert {s for s in seen if not s[0]} == {(False, False, False, False)}
    assert len(seen) == 2 * 2  # two windows, conditional + unconditional each


def test_cancel_stops_between_chunks(net):
    reference, skeleton, render = _inputs()
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        animate_vividpose(net, reference, skeleton, render, _settings(), device=CPU, check=check)


def test_inputs_are_checked(net):
    reference, skeleton, render = _inputs()
    with pytest.raises(MarionetteError, match="render frames"):
        animate_vividpose(net, reference, skeleton, render[:3], _settings(), device=CPU)
    with pytest.raises(MarionetteError, match="same size"):
        animate_vividpose(net, reference, skeleton, render[:, :32], _settings(), device=CPU)
    without_id = tiny_vividpose_animation(identity=False)
    with pytest.raises(MarionetteError, match="without the identity controller"):
        animate_vividpose(without_id, reference, skeleton, render, _settings(), device=CPU,
                          face_embedding=torch.randn(512))
    result = animate_vividpose(without_id, reference, skeleton, render, _settings(steps=1), device=CPU)
    assert result.frames.shape == (FRAMES, SIZE, SIZE, 3)
