"""The arithmetic behind tools/official_train_parity.py and official_train_speed.py (the tools
themselves need the official code and are not run here)."""
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from train_measures import (cpu_bf16, kind_of, noise_verdict, rates, ratio,  # noqa: E402
                            relative_errors, scalar_relative, sign_test_p, worst)


def test_relative_errors_are_per_tensor_with_a_floor_for_near_zero_ones():
    theirs = {"w": np.array([1.0, -2.0, 0.5]), "b": np.array([1e-12, -1e-12]),
              "z": np.zeros(3)}
    same = relative_errors(theirs, theirs)
    assert same == {"w": 0.0, "b": 0.0, "z": 0.0}
    ours = {"w": np.array([1.0, -2.002, 0.5]),      # 0.002 off on a scale of 2
            "b": np.array([3e-12, -1e-12]),          # noise: 200% of its own scale
            "z": np.array([0.0, 4e-4, 0.0])}         # a zero gradient that is not zero here
    err = relative_errors(ours, theirs, floor=1e-4)
    assert err["w"] == pytest.approx(1e-3)
    assert err["b"] == pytest.approx(2e-12 / (1e-4 * 2.0))    # floored scale: 2e-4
    assert err["z"] == pytest.approx(4e-4 / 2e-4)             # refused: 2.0
    assert worst(err, 2) == [("z", err["z"]), ("w", err["w"])]
    with pytest.raises(ValueError, match="different tensors"):
        relative_errors({"w": ours["w"]}, theirs)


def test_scalar_relative():
    assert scalar_relative(1.0001, 1.0) == pytest.approx(1e-4)
    assert scalar_relative(-2.0, -2.0) == 0.0
    assert scalar_relative(3e-9, 0.0) == pytest.approx(3e-9)


def test_rates_take_the_median_and_the_ratio_is_ours_over_theirs():
    r = rates({"official": [2.0, 1.0, 4.0], "ours": [1.0, 0.5, 0.9]}, batch_size=2)
    assert r["official"] == {"median_s": 2.0, "min_s": 1.0, "runs": 3, "images_per_s": 1.0}
    assert r["ours"]["images_per_s"] == pytest.approx(2 / 0.9, abs=1e-3)
    assert ratio(r["ours"], r["official"]) == pytest.approx(2.222, abs=1e-3)


def test_cpu_bf16_reads_the_flags():
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert cpu_bf16(avx2) == (False, "avx2")
    assert cpu_bf16(avx2.replace("avx2", "avx2 avx512f")) == (False, "avx512f")
    assert cpu_bf16(avx2.replace("fma", "avx512f avx512_bf16")) == (True, "avx512_bf16")
    assert cpu_bf16(avx2.replace("fma", "amx_bf16 amx_tile")) == (True, "amx_bf16")
    assert cpu_bf16("") == (False, "no avx2")


def test_sign_test_p():
    assert sign_test_p(0, 10) == 1.0 and sign_test_p(10, 10) == pytest.approx(2 ** -10)
    assert sign_test_p(6, 10) == pytest.approx(386 / 1024)


def test_kind_of_drops_numeric_suffixes_only():
    assert kind_of("fpn_cells/cell_1/fnode6/WSM_2") == "WSM"
    assert kind_of("fpn_cells/cell_1/fnode6/WSM") == "WSM"
    assert kind_of("box_net/box-0-bn-7/gamma") == "gamma"
    assert kind_of("blocks_0/depthwise_conv2d/depthwise_kernel") == "depthwise_kernel"


def _noisy_sides(seed=0, scale=0.5):
    """Official gradients, the official again rounded another way, and ours: each a
    separate sample of multiplicative noise around the same truth (a bf16 comparison)."""
    rng = np.random.default_rng(seed)
    kinds = {"kernel": (60, (3, 3, 8)), "bias": (30, (8,)), "gamma": (30, (8,)), "WSM": (12, ())}
    truth = {f"layer{i}/{kind}": rng.standard_normal(shape)
             for kind, (n, shape) in kinds.items() for i in range(n)}
    def sample():
        return {k: v * (1 + scale * rng.standard_normal(np.shape(v))) for k, v in truth.items()}
    return sample(), sample(), sample()


def _verdict(official, again, ours, **kw):
    return noise_verdict(relative_errors(ours, official), relative_errors(again, official),
                         floor=0.1, **kw)


def test_noise_verdict_accepts_two_samples_of_the_same_noise():
    for seed in range(5):
        v = _verdict(*_noisy_sides(seed))
        assert v["ok"], v
        assert set(v["kinds"]) == {"kernel", "bias", "gamma", "WSM"}
        assert all(r["p"] >= 1e-3 for r in v["kinds"].values())


def test_noise_verdict_refuses_one_wrong_tensor_and_a_systematic_kind():
    official, again, ours = _noisy_sides()
    # one bias gradient summed wrongly (bf16 BiasAddGrad: 16.5 for 0.24)
    one = dict(ours, **{"layer3/bias": ours["layer3/bias"] * 70})
    v = _verdict(official, again, one)
    assert not v["ok"] and not v["kinds"]["bias"]["ok"] and v["kinds"]["kernel"]["ok"]
    assert v["kinds"]["bias"]["worst"][0] == "layer3/bias"
    # every gamma gradient 3x too large: no single outlier, the kind's median moves
    three = {k: v * 3 if k.endswith("gamma") else v for k, v in ours.items()}
    v = _verdict(official, again, three)
    assert not v["ok"] and not v["kinds"]["gamma"]["ok"]
    assert v["kinds"]["gamma"]["p"] < 1e-3 and v["kinds"]["gamma"]["worst"][1] < 10
    assert v["kinds"]["gamma"]["median_ratio"] > 1.5 and v["beyond_twice_noise"] >= 20


def test_a_named_difference_is_reported_but_not_judged():
    official, again, ours = _noisy_sides()
    off = {k: v * 20 if k.endswith("WSM") else v for k, v in ours.items()}
    assert not _verdict(official, again, off)["ok"]
    v = _verdict(official, again, off, named={"WSM": "normalised in float32 here"})
    assert v["ok"] and v["kinds"]["WSM"]["ok"] is None
    assert v["kinds"]["WSM"]["named"] == "normalised in float32 here"
    assert v["kinds"]["WSM"]["median_ratio"] > 1.5
