"""The built-in detection dataset: coloured shapes on noisy backgrounds, at a difficulty
level ("easy", the original scenes, or "hard"); ``python -m edetgraph.data.synthetic --help``
says what each holds.

The parts: ``shapes`` (the object outlines), ``levels`` (the difficulty levels' knobs),
``clutter`` (what "hard" adds: texture, distractors, overlap), ``scene`` (one image and its
labels), ``writer`` (COCO folders and TFRecords), ``command`` (the CLI).
"""
from edetgraph.data.synthetic.command import main
from edetgraph.data.synthetic.levels import DIFFICULTIES, EASY, Difficulty, difficulty
from edetgraph.data.synthetic.scene import (_ASPECT_RANGE, _EMPTY_FRACTION, _MAX_HIDDEN,
                                            _PLACEMENT_TRIES, _SIZE_RANGE, Scene, _background,
                                            _fits, _object_colour, _sample_box,
                                            _visible_objects, render_image, render_scene)
from edetgraph.data.synthetic.shapes import _POLYGONS, SHAPES, _star, shape_mask
from edetgraph.data.synthetic.writer import (DEFAULT_NUM_CLASSES, _write_split, categories,
                                             generate, write_tfrecords)

__all__ = ["DEFAULT_NUM_CLASSES", "DIFFICULTIES", "EASY", "SHAPES", "Difficulty", "Scene",
           "categories", "difficulty", "generate", "main", "render_image", "render_scene",
           "shape_mask", "write_tfrecords"]
