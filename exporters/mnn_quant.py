"""int8 MNN files: MNN's own post-training quantiser (the ``_tools`` extension of the mnn
wheel) run on the float32 ``.mnn`` file, calibrated on representative images.

The quantiser keeps one int8 scale per activation tensor and per output channel of each
convolution's weights (MAX_ABS), and leaves the rest float. Activation scales by ADMM by
default, not MNN's own default KL: on the trained demo model (256 px, relu6, 100 training
images, AP on 200 val images, AVX-512 EPYC) ADMM lost 0.14 AP points (24 images) and KL 14.3,
with KL's P6/P7 and class levels at 0-3 dB SQNR against the float32 file where ADMM's were
10-20 dB. ADMM stayed at 46 MB peak memory for 24 and for 100 images.

Its calibration samples are given in its *sequence* mode: one folder per sample holding the
input tensor as text, each image prepared exactly as the exported file's input by
``exporters.calibration`` (the spec's mean/std normalisation and letterbox, or uint8
pixels), the same samples the other int8 exporters calibrate on. Not its image mode (a
folder of pictures, normalised by the config's ``mean``/``normal``): with mnn 3.6.1 that
mode writes the picture channels-first into our NHWC input (measured: KL ran every
calibration pass into a shape error and still wrote a file, with zero scales; ADMM and EMA
crashed). Text costs room: about 8 bytes per value, 6 MB per 512x512 image, in a
temporary folder for the length of the export.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from exporters.options import ExportFailed

TOOL_TIMEOUT_S = 1800
FEATURE_METHODS = ("ADMM", "KL")   # EMA crashes on our models with mnn 3.6.1 (measured)
# The quantiser called directly in a child process (its console output and any native crash
# stay there), not the wheel's ``mnnquant`` entry point, for the reason ``mnn_format`` gives
# for the converter (a usage logger that pip-installs a client and posts ids). The binding
# takes an argv list, not the three strings that entry point passes it.
_MNNQUANT = "import sys\nimport _tools\n_tools.mnnquant(['mnnquant'] + sys.argv[1:])\n"
# The quantiser reports a failed calibration pass and carries on: its scales are then zero.
_PASS_FAILED = re.compile(r"Compute Shape Error|in onForward|mismatch")


@dataclass(frozen=True)
class MnnQuantOptions:
    """An int8 MNN export: calibration images (folder or TFRecord), how many, and MNN's
    activation (``feature``) and weight quantisation methods."""
    representative: str
    calibration_images: int = 100
    feature_method: str = "ADMM"
    weight_method: str = "MAX_ABS"

    def facts(self) -> dict:
        """What the file's metadata says of its quantisation."""
        return {"kind": "int8", "by": "MNN's post-training quantiser",
                "activations": f"int8, one scale per tensor ({self.feature_method})",
                "weights": f"int8, one scale per output channel ({self.weight_method})",
                "calibration_images": self.calibration_images}


def run_tool(script: str, args: list, what: str) -> tuple:
    """``(exit status, non-empty output lines)`` of ``script`` (MNN's native tool) run by
    this Python in a child process with ``args``."""
    try:
        done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, errors="replace", timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ExportFailed(f"{what} did not finish in {TOOL_TIMEOUT_S} s") from None
    return done.returncode, [ln.strip() for ln in (done.stdout + done.stderr).splitlines()
                             if ln.strip()]


def last_error(said: list) -> str:
    """The line that best says why a tool failed: its last error line, else its last line."""
    return next((ln for ln in reversed(said) if "rror" in ln), said[-1] if said else "")[:300]


def write_samples(batches, folder: str, input_name: str) -> int:
    """One sequence-mode sample folder per batch (``[B, H, W, 3]``, the file's input);
    returns how many."""
    count = 0
    for count, batch in enumerate(batches, 1):
        sample = os.path.join(folder, f"{count:05d}")
        os.makedirs(sample)
        # %.5g: integers to 255 exactly, normalised floats far finer than an int8 step
        np.savetxt(os.path.join(sample, f"{input_name}.txt"),
                   np.asarray(batch, np.float32).reshape(1, -1), fmt="%.5g")
        with open(os.path.join(sample, "input.json"), "w") as f:
            json.dump({"inputs": [{"name": input_name, "shape": list(batch.shape)}]}, f)
    return count


def quantise(fp32: bytes, batches, input_name: str, q: MnnQuantOptions) -> bytes:
    """The int8 MNN file of the float32 file ``fp32``, calibrated on ``batches`` (arrays
    prepared as the file's input ``input_name``)."""
    with tempfile.TemporaryDirectory(prefix="edetgraph-mnn-int8-") as tmp:
        src, dst = os.path.join(tmp, "fp32.mnn"), os.path.join(tmp, "int8.mnn")
        samples, config = os.path.join(tmp, "samples"), os.path.join(tmp, "config.json")
        with open(src, "wb") as f:
            f.write(fp32)
        count = write_samples(batches, samples, input_name)
        if count == 0:
            raise ExportFailed(f"--representative-data {q.representative}: no calibration "
                               "sample (fewer images than the batch)")
        with open(config, "w") as f:
            json.dump({"input_type": "sequence", "path": samples, "used_sample_num": count,
                       "feature_quantize_method": q.feature_method,
                       "weight_quantize_method": q.weight_method}, f)
        status, said = run_tool(_MNNQUANT, [src, dst, config], "MNN's quantiser")
        failed_pass = next((ln for ln in said if _PASS_FAILED.search(ln)), None)
        if failed_pass is not None:
            raise ExportFailed(f"MNN's quantiser could not run the model on the calibration "
                               f"samples: {failed_pass[:300]}")
        if status < 0:
            raise ExportFailed(f"MNN's quantiser crashed (signal {-status}) after: "
                               f"{said[-1][:300] if said else 'no output'}")
        if status != 0 or not os.path.isfile(dst) or os.path.getsize(dst) == 0:
            raise ExportFailed(f"MNN's quantiser failed (exit {status}): {last_error(said)}")
        with open(dst, "rb") as f:
            return f.read()
