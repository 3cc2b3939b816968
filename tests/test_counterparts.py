"""Counterparts of target tokens in the base view (innout.training.counterparts): geometry
on hand-made cameras, occlusion, the UNet levels' grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from innout.cameras import Camera, Intrinsics
from innout.training.counterparts import (CounterpartAttention, attention_loss, counterpart_positions, gaussian_targets,
                                          token_grid)

W, H = 160, 120  # the training views' size; latent 20 x 15
LATENT = (15, 20)
FOCAL, PLANE = 100.0, 2.0  # a wall 2 units in front of the cameras


def _camera(x: float = 0.0) -> Camera:
    c2w = np.eye(4)
    c2w[0, 3] = x  # OpenGL axes: looking along -z, x to the right
    return Camera(c2w, Intrinsics(FOCAL, FOCAL, W / 2, H / 2, W, H))


def _wall() -> np.ndarray:
    return np.full((H, W), PLANE, np.float32)


def counterpart_targets(target, target_depth, base, base_depth, latent_hw, tokens, sigma):
    """Soft targets (L, L) and validity (L,) of one pair, as Counterparts.batch builds them."""
    position, valid = counterpart_positions(target, target_depth, base, base_depth, latent_hw, tokens)
    _, rows, cols = token_grid(*latent_hw, tokens)
    return gaussian_targets(position, rows, cols, sigma), valid


def _argmax_shift(targets: torch.Tensor, valid: torch.Tensor, cols: int) -> set[tuple[int, int]]:
    token = torch.arange(targets.shape[0])[valid]
    best = targets[valid].argmax(-1)
    return {(int(r), int(c)) for r, c in zip(best // cols - token // cols, best % cols - token % cols)}


def test_token_grids_follow_the_unets_stride_two_levels():
    assert token_grid(15, 20, 300) == (1, 15, 20)
    assert token_grid(15, 20, 80) == (2, 8, 10)  # ceil(15 / 2) rows
    assert token_grid(15, 20, 20) == (4, 4, 5)
    with pytest.raises(ValueError, match="7 tokens"):
        token_grid(15, 20, 7)


def test_a_view_is_its_own_counterpart_token_for_token():
    for tokens in (300, 80, 20):
        targets, valid = counterpart_targets(_camera(), _wall(), _camera(), _wall(), LATENT, tokens, 0.6)
        assert bool(valid.all())
        assert torch.equal(targets.argmax(-1), torch.arange(tokens))
        torch.testing.assert_close(targets.sum(-1), torch.ones(tokens))


def test_a_sideways_camera_sees_the_wall_shifted_by_focal_times_baseline_over_depth():
    # base camera 0.32 units to the right: the wall moves 100 * 0.32 / 2 = 16 px = 2 latent pixels left
    base = _camera(0.32)
    fine, fine_valid = counterpart_targets(_camera(), _wall(), base, _wall(), LATENT, 300, 0.6)
    assert _argmax_shift(fine, fine_valid, 20) == {(0, -2)}
    assert not bool(fine_valid.view(15, 20)[:, :2].any()) and bool(fine_valid.view(15, 20)[:, 2:].all())
    coarse, coarse_valid = counterpart_targets(_camera(), _wall(), base, _wall(), LATENT, 80, 0.6)
    assert _argmax_shift(coarse, coarse_valid, 10) == {(0, -1)}  # one token of the stride-2 level


def test_points_the_base_sees_behind_something_nearer_have_no_counterpart():
    occluded = _wall()
    occluded[:, : W // 2] = 1.0  # the base sees a nearer surface on its left half
    _, valid = counterpart_targets(_camera(), _wall(), _camera(), occluded, LATENT, 300, 0.6)
    grid = valid.view(15, 20)
    assert not bool(grid[:, :10].any()) and bool(grid[:, 10:].all())


class _SameCamera:
    """Counterparts of views that are all the same camera over the same wall."""

    def batch(self, targets, bases, tokens):
        one, valid = counterpart_targets(_camera(), _wall(), _camera(), _wall(), LATENT, tokens, 0.6)
        return one.expand(len(targets), -1, -1), valid.expand(len(targets), -1)


def test_attention_loss_is_lowest_on_the_counterparts_and_counts_hits():
    pairs = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    wanted, _ = _SameCamera().batch(*pairs, 80)
    uniform = torch.full((2, 2, 80, 80), 1 / 80)
    on_target = wanted.unsqueeze(1).expand(2, 2, 80, 80)  # attention exactly the wanted distribution
    off_target = wanted.roll(5, dims=-1).unsqueeze(1).expand(2, 2, 80, 80)  # the same, five tokens off
    losses = {name: attention_loss([probs], _SameCamera(), *pairs) for name, probs in
              (("uniform", uniform), ("on", on_target), ("off", off_target))}
    assert losses["on"][0] < losses["uniform"][0] < losses["off"][0]
    assert losses["on"][1] == 1.0 and losses["off"][1] == 0.0
    with pytest.raises(RuntimeError, match="no attention"):
        attention_loss([], _SameCamera(), *pairs)


def test_geometric_attention_lands_on_the_counterparts_and_keeps_the_models_attention_elsewhere():
    """CounterpartAttention (tools/measure_ila_geometric.py): with the base 0.32 to the right, the
    tokens attend 2 columns left as Gaussians; the first two columns (no counterpart) keep softmax(qk)."""
    controller = CounterpartAttention(0.2, LATENT, 0.6)
    with pytest.raises(RuntimeError, match="pair"):
        controller.attend_base("x", torch.zeros(1, 1, 300, 4), torch.zeros(1, 1, 300, 4), torch.zeros(1, 1, 300, 4), None)
    controller.pair(_camera(), _wall(), _camera(0.32), _wall())
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 300, 4), torch.randn(2, 3, 300, 4)
    values = torch.eye(300).expand(2, 3, 300, 300)  # identity values: the output rows are the attention
    attention = controller.attend_base("x", q, k, values, None)
    wanted, valid = counterpart_targets(_camera(), _wall(), _camera(0.32), _wall(), LATENT, 300, 0.6)
    assert 0 < int(valid.sum()) < 300
    torch.testing.assert_close(attention[:, :, valid], wanted[valid].expand(2, 3, -1, -1))
    assert _argmax_shift(attention[0, 0], valid, 20) == {(0, -2)}
    learned = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    torch.testing.assert_close(attention[:, :, ~valid], learned[:, :, ~valid])
    assert controller.placed == 2 * int(valid.sum()) and controller.tokens == 2 * 300
