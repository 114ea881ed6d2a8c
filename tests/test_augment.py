"""Batch augmentations: what each does to windows and targets, and that the run's generator
decides it (a resumed run replays the same augmentations)."""
import torch

from train.augment import mixup, power_mix, spec_mask


def batch(b=6, m=16, t=40, c=5):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, m, t, generator=g)  # features scaled to [0, 1]
    labels = torch.arange(b) % c
    return x, torch.nn.functional.one_hot(labels, c).float()


def test_mixup_keeps_the_first_window_dominant_and_unites_the_labels_for_sigmoid_training():
    x, y = batch()
    torch.manual_seed(0)
    mx, my = mixup(x, y, alpha=0.5, union_targets=True, gen=torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # replay the draws: lam from torch's generator, the partner from the run's
    lam = torch.distributions.Beta(0.5, 0.5).sample((len(x),))
    lam = torch.maximum(lam, 1 - lam).view(-1, 1, 1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    assert torch.all(lam >= 0.5)
    assert torch.allclose(mx, lam * x + (1 - lam) * x[perm])
    assert torch.equal(my, torch.maximum(y, y[perm]))  # both species are present


def test_mixup_for_softmax_training_blends_targets_that_still_sum_to_one():
    x, y = batch()
    torch.manual_seed(0)
    _, my = mixup(x, y, alpha=0.5, union_targets=False, gen=torch.Generator().manual_seed(1))
    assert torch.allclose(my.sum(1), torch.ones(len(y)))
    assert torch.all(my.max(1).values >= 0.5)  # the first window's label keeps at least half


def test_softmax_mixup_gives_each_window_its_own_share_lam_and_its_partner_the_rest():
    x, y = batch()
    torch.manual_seed(0)
    _, my = mixup(x, y, alpha=0.5, union_targets=False, gen=torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # replay the draws, as for the sigmoid case
    lam = torch.distributions.Beta(0.5, 0.5).sample((len(x),))
    lam = torch.maximum(lam, 1 - lam).view(-1, 1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(my, lam * y + (1 - lam) * y[perm])  # the louder window's label weighs more


def test_power_mixing_adds_a_quieter_window_and_stays_in_the_feature_range():
    x, y = batch()
    mx, my = power_mix(x, y, (0.0, 15.0), top_db=80.0, gen=torch.Generator().manual_seed(2))
    assert mx.min() >= 0 and mx.max() <= 1 and torch.all(my >= y)
    assert torch.all(mx.amax((1, 2)) == 1.0)  # each window is rescaled to its own peak
    far_below, _ = power_mix(x, y, (200.0, 200.0), top_db=80.0, gen=torch.Generator().manual_seed(2))
    own_peak_at_one = (x - x.amax((1, 2), keepdim=True) + 1).clamp(0, 1)  # 200 dB down: inaudible
    assert torch.allclose(far_below, own_peak_at_one, atol=1e-4)


def test_spec_mask_silences_at_most_one_whole_time_band_and_one_whole_mel_band_per_window():
    x = torch.ones(64, 16, 40)
    masked = spec_mask(x, torch.Generator().manual_seed(3), max_time_frac=0.25, max_freq_frac=0.25)
    zero = masked == 0
    assert masked.shape == x.shape and torch.all(masked[~zero] == 1)
    both = 0
    for w in zero:
        frames, bins = w.all(0), w.all(1)  # fully silenced frames [40], mel bins [16]
        assert frames.sum() <= 10 and bins.sum() <= 4
        assert torch.equal(w, frames.view(1, -1) | bins.view(-1, 1))  # only whole bands
        for band in (frames, bins):  # one contiguous run each, where there is one
            idx = band.nonzero().flatten()
            assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
        both += bool(frames.any() and bins.any())
    # A width rounds down to 0 with probability 1/10 in time and 1/4 in frequency here.
    assert both >= 32, f"only {both} of 64 windows were masked in time and frequency"


def test_the_same_generator_state_gives_the_same_augmentations():
    x, y = batch()
    a = spec_mask(x, torch.Generator().manual_seed(7))
    b = spec_mask(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    pa = power_mix(x, y, (0.0, 15.0), 80.0, torch.Generator().manual_seed(7))
    pb = power_mix(x, y, (0.0, 15.0), 80.0, torch.Generator().manual_seed(7))
    assert torch.equal(pa[0], pb[0]) and torch.equal(pa[1], pb[1])
    # mixup draws its pairing from the run's generator and its weights from torch's global one
    # (seeded by the run and saved in every checkpoint, so a resumed run draws the same).
    torch.manual_seed(7)
    ma = mixup(x, y, 0.5, True, torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    mb = mixup(x, y, 0.5, True, torch.Generator().manual_seed(7))
    assert torch.equal(ma[0], mb[0]) and torch.equal(ma[1], mb[1])


def test_a_time_shift_rolls_each_window_whole_by_at_most_the_share_given():
    from train.augment import time_shift

    x = torch.arange(4 * 3 * 20, dtype=torch.float32).view(4, 3, 20)
    shifted = time_shift(x, torch.Generator().manual_seed(4), max_frac=0.25)
    for w, s in zip(x, shifted):
        rolls = [k for k in range(-5, 6) if torch.equal(torch.roll(w, k, dims=1), s)]
        assert len(rolls) == 1  # a circular shift of every mel bin together, of at most 5 of 20 frames
    assert not torch.equal(shifted, x)
    assert torch.equal(time_shift(x, torch.Generator().manual_seed(4), max_frac=0.0), x)


def test_a_time_shift_beyond_the_window_is_refused_with_the_valid_range():
    import pytest

    from train.config import config_for

    assert config_for("simple_cnn", "data", time_shift=0.5).time_shift == 0.5
    with pytest.raises(ValueError, match=r"share of the window in \[0, 1\]"):
        config_for("simple_cnn", "data", time_shift=1.5)


def test_power_mixing_adds_the_partner_at_the_drawn_level_below_in_power_not_in_amplitude():
    seed = next(s for s in range(100) if torch.randperm(2, generator=_after_rand(s, 2)).tolist() == [1, 0])
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [B=2, M=1, T=2]: each loud where the other is silent
    y = torch.eye(2)
    mx, my = power_mix(x, y, (10.0, 10.0), top_db=80.0, gen=torch.Generator().manual_seed(seed))
    # the partner's frame 10 dB below the window's peak: (-10 + 80) / 80 = 0.875
    assert torch.allclose(mx, torch.tensor([[[1.0, 0.875]], [[0.875, 1.0]]]), atol=1e-4)
    assert torch.equal(my, torch.ones(2, 2))


def _after_rand(seed: int, b: int) -> torch.Generator:
    g = torch.Generator().manual_seed(seed)
    torch.rand(b, generator=g)  # power_mix draws the SNRs first, then the partners
    return g


def test_a_time_shift_moves_windows_earlier_as_well_as_later():
    from train.augment import time_shift

    x = torch.arange(64 * 20, dtype=torch.float32).view(64, 1, 20)
    shifted = time_shift(x, torch.Generator().manual_seed(0), max_frac=0.25)
    rolls = [next(k for k in range(-5, 6) if torch.equal(torch.roll(w, k, dims=1), s)) for w, s in zip(x, shifted)]
    assert min(rolls) < 0 < max(rolls)
    assert min(rolls) >= -5 and max(rolls) <= 5
