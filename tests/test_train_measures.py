"""The arithmetic behind tools/official_train_parity.py and official_train_speed.py (the tools
themselves need the official code and are not run here)."""
import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from train_measures import cpu_bf16, rates, ratio, relative_errors, scalar_relative, worst  # noqa: E402


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
