"""A file's metadata checked against its graph: the graph is what runs, so every fact the
metadata states that the graph can confirm must agree with it, or the file is refused in
one line (:class:`MetadataError`) before a picture is prepared for it.

Metadata saying uint8 input on a float graph would otherwise feed raw pixels to a network
that expects normalised ones and write wrong detections with exit 0; a size or an output
name that disagrees would end in a traceback deep in pre- or post-processing. The sizes the
metadata claims are bounded first, by the same limits as specs (``check_budget``), so a
hostile file cannot make us allocate what it names.
"""
from __future__ import annotations

from edetgraph.cli import printable
from edetgraph.graph import outputs as out_names
from edetgraph.graph.budget import check_budget
from edetgraph.verify.file_metadata import MetadataError

DETECTION_KEYS = ("boxes", "scores", "classes", "num_detections")


def check_claims(path, facts: dict, spec) -> None:
    """What the metadata says, checked against itself and bounded, before any runtime
    loads the file: its spec within the limits, and its input size and class count the
    spec's."""
    for key in ("input", "outputs"):
        if not isinstance(facts.get(key), dict):
            _refuse(path, f"'{key}' is {type(facts.get(key)).__name__}, not a mapping")
    labels = facts.get("labels") or {}
    if not isinstance(labels, dict) or not all(str(k).isdigit() for k in labels):
        _refuse(path, "its labels are not a mapping of class ids to names")
    try:
        check_budget(spec)
    except ValueError as e:
        raise MetadataError(f"{path}: its metadata claims a model past the limits: "
                            f"{str(e).splitlines()[0]}") from None
    inp = facts.get("input") or {}
    h, w = spec.image_size
    if (inp.get("height"), inp.get("width")) != (h, w):
        _refuse(path, f"input {inp.get('height')}x{inp.get('width')} but its spec's "
                      f"image_size is {h}x{w}")
    if facts.get("num_classes") != spec.num_classes:
        _refuse(path, f"{facts.get('num_classes')} classes but its spec has "
                      f"{spec.num_classes}")
    if (inp.get("kind"), inp.get("dtype")) not in (("uint8", "uint8"), ("float", "float32")):
        _refuse(path, f"input kind {inp.get('kind')!r} with dtype {inp.get('dtype')!r}")
    outs = facts.get("outputs") or {}
    if outs.get("kind") not in ("raw", "detections"):
        _refuse(path, f"outputs of kind {outs.get('kind')!r}")
    if outs.get("kind") == "detections" and (outs.get("nms") not in ("fast", "hard")
                                             or outs.get("boxes") not in ("ratio", "pixels")):
        _refuse(path, f"detections with NMS {outs.get('nms')!r} and boxes in "
                      f"{outs.get('boxes')!r}")


def check_graph(path, facts: dict, spec, runner) -> None:
    """The loaded graph's input and outputs against the metadata: one input
    ``[B, H, W, 3]`` of the stated dtype and size; raw head outputs named and shaped as the
    spec's network makes them, or the four detection outputs."""
    if len(runner.input_details) != 1:
        _refuse(path, f"{len(runner.input_details)} inputs in the graph, the metadata "
                      "describes one picture")
    graph_in, inp = runner.input_details[0], facts["input"]
    h, w = spec.image_size
    if graph_in.dtype != inp["dtype"]:
        _refuse(path, f"input dtype {inp['dtype']} but the graph takes {graph_in.dtype}")
    if len(graph_in.shape) != 4 or tuple(graph_in.shape[1:]) not in ((h, w, 3),
                                                                     (None, None, 3)):
        _refuse(path, f"input {h}x{w}x3 but the graph takes {graph_in.shape}")
    got = {d.name: tuple(d.shape) for d in runner.output_details}
    if facts["outputs"].get("kind") == "detections":
        missing = [k for k in DETECTION_KEYS if k not in got]
        if missing:
            _refuse(path, f"detection outputs, but the graph has no {', '.join(missing)} "
                          f"(it has {', '.join(sorted(got))})")
        return
    want = out_names.shapes(spec)
    if set(got) != set(want):
        _refuse(path, f"raw outputs {', '.join(sorted(want))} but the graph has "
                      f"{', '.join(sorted(got))}")
    for name, shape in want.items():
        if len(got[name]) != 4 or tuple(got[name][1:]) != shape[1:]:
            _refuse(path, f"output {name} of shape {shape[1:]} per picture but the graph's "
                          f"is {got[name]}")


def _refuse(path, what: str):
    raise MetadataError(printable(f"{path}: its metadata disagrees with its graph: {what}; "
                                  "the file is not used (export it again)"))
