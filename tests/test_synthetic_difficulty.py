"""The built-in dataset's difficulty levels: "easy" is the original generator, byte for byte
(the demo's recorded APs rest on it); "hard" adds clutter, textures, occluders, small and
overlapping objects, with labels that stay those of the visible pixels."""
import hashlib
import json

import numpy as np

from edetgraph.data import synthetic

# sha256 of the pixels and labels of 12 images (seeds, sizes and class counts below) and of
# the files generate() writes, computed with the generator as it was before difficulty
# levels existed (numpy 2.4.6, Pillow 13.0.0: PIL's resampling and JPEG coder are in them).
EASY_RENDER_SHA = "8c423147e561d54c2a54c8840f49bf7b26924f7d90b039d5b9f9d5e6c81a64a6"
EASY_FILES_SHA = "afe7d97d469e71ed3b5adab6bc69558e512cd86a8b0a2c1709a2af7762b4b9fb"
PINNED = [(0, 64, 6), (1, 128, 8), (7, 96, 3), (3, 256, 6)]


def _render_digest(**kwargs) -> str:
    h = hashlib.sha256()
    for seed, size, classes in PINNED:
        for image_id in range(1, 4):
            rng = np.random.default_rng([seed, image_id])
            image, objects = synthetic.render_image(rng, size, classes, **kwargs)
            h.update(image.tobytes())
            h.update(json.dumps(objects, sort_keys=True).encode())
    return h.hexdigest()


def _files_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_easy_is_the_original_generator_byte_for_byte(tmp_path):
    assert _render_digest() == EASY_RENDER_SHA
    synthetic.generate(tmp_path / "a", 12, 64, seed=5, val_fraction=0.25)
    assert _files_digest(tmp_path / "a") == EASY_FILES_SHA
