"""The quantised-file gate judges each pyramid level on its own, not only each head with its
levels pooled: a conv shared by P3..P7 quantised with one level's scale leaves a small level
garbage while the pooled figure, which the large P3 dominates, stays fine."""
import re

import numpy as np
import pytest

from edetgraph.verify.parity import ParityGate, format_parity, tolerance_for

SIDES = {3: 32, 4: 16, 5: 8, 6: 4, 7: 2}   # a 256-pixel input: P7 is 1/341 of the cells
CHANNELS = {"cls": 2 * 3, "box": 2 * 4}    # 2 anchors, 3 classes


def _outputs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {f"{head}_l{lvl}": rng.normal(0, 1, (2, side, side, c)).astype(np.float32)
            for lvl, side in SIDES.items() for head, c in CHANNELS.items()}


def _gate(kind: str, got: dict, ref: dict) -> dict:
    gate = ParityGate(tolerance_for(kind), num_classes=3, image_side=256)
    gate.add_outputs(["real-0", "real-1"], ref, got, real=True)
    return gate.result()


def _quantised(ref: dict, noise: float, seed: int = 1) -> dict:
    """``ref`` with rounding noise of ``noise`` times its spread: a correct int8 file."""
    rng = np.random.default_rng(seed)
    return {k: v + rng.normal(0, noise, v.shape).astype(np.float32) for k, v in ref.items()}


@pytest.mark.parametrize("kind", ["int8", "dynamic"])
def test_one_garbage_level_is_refused_though_its_head_pooled_passes(kind):
    ref = _outputs(0)
    got = _quantised(ref, 0.1)
    got["box_l7"] = -4.0 * ref["box_l7"]          # P7 with a wrong scale and sign
    p = _gate(kind, got, ref)
    assert p["heads"]["box"]["nrmse"] < 0.5 and p["heads"]["cls"]["nrmse"] < 0.5  # pooled: fine
    assert not p["passed"] and len(p["failures"]) == 1
    line = p["failures"][0]
    assert re.match(r"box level P7 \(box_l7\): RMSE/std 5\.0\d \(SQNR -14\.0 dB\) not below 1, "
                    r"the head's levels pooled 0\.2\d", line)
    assert "\n" not in line and "image " in line
    p7 = p["levels"]["box"]["P7"]
    assert p7["output"] == "box_l7" and p7["sqnr_db"] == pytest.approx(-20 * np.log10(p7["nrmse"]),
                                                                         abs=0.01)
    assert p["tolerance"]["level_nrmse"] == 1.0


def test_a_correct_quantised_output_passes_with_its_levels_reported():
    ref = _outputs(0)
    p = _gate("int8", _quantised(ref, 0.3), ref)
    assert p["passed"] and not p["failures"]
    assert set(p["levels"]) == {"cls", "box"}
    assert list(p["levels"]["cls"]) == ["P3", "P4", "P5", "P6", "P7"]
    for by_level in p["levels"].values():
        assert all(8 < f["sqnr_db"] < 13 for f in by_level.values())   # -20 log10(0.3) = 10.5
    text = format_parity(p)
    assert "(int8: RMSE/std < 1 per head, < 1 per level;" in text
    assert "per level, RMSE/std: box P3 0.298, P4 " in text


def test_a_level_barely_carrying_the_signal_passes_and_one_without_it_does_not():
    ref = _outputs(0)
    for scale, passed in ((0.9, True), (1.1, False)):   # the bound: SQNR 0 dB per level
        got = _quantised(ref, 0.05)
        got["cls_l6"] = ref["cls_l6"] + scale * ref["cls_l6"].std() * np.sign(ref["cls_l6"])
        assert _gate("int8", got, ref)["passed"] is passed


def test_a_head_failing_pooled_names_its_worst_level_and_its_figure():
    ref = _outputs(0)
    got = {k: -v for k, v in ref.items()}      # every level inverted: RMSE/std 2
    line = _gate("int8", got, ref)["failures"][0]
    assert re.match(r"box \(all levels\): RMSE/std 2\.0\d* not below 1; worst output "
                    r"box_l\d \(RMSE/std 2\.\d+\), largest diff", line), line


def test_fp32_files_keep_their_element_tolerance_alone():
    ref = _outputs(0)
    p = _gate("fp32", dict(ref), ref)
    assert p["passed"] and p["tolerance"]["level_nrmse"] is None
