"""The built-in dataset's difficulty levels: "easy" is the original generator, byte for byte
(the demo's recorded APs rest on it); "hard" adds clutter, textures, occluders, small and
overlapping objects, with labels that stay those of the visible pixels."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_digest

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


def test_easy_is_the_original_generator_byte_for_byte(tmp_path):
    assert _render_digest() == EASY_RENDER_SHA
    synthetic.generate(tmp_path / "a", 12, 64, seed=5, val_fraction=0.25)
    assert tree_digest(tmp_path / "a") == EASY_FILES_SHA


def _scenes(level: str, count: int = 12, size: int = 128):
    return [synthetic.render_scene(np.random.default_rng([4, i]), size, 6,
                                   synthetic.DIFFICULTIES[level]) for i in range(count)]


def _outside_boxes(shape, objects) -> np.ndarray:
    keep = np.ones(shape, bool)
    for o in objects:
        x, y, w, h = o["bbox"]
        keep[y:y + h, x:x + w] = False
    return keep


def _strong_edges_outside_boxes(scene) -> float:
    """Share of the pixels outside every labelled box where the colour jumps (> 60 in a
    channel) to the right neighbour: rare on the smooth easy background, not on hard's."""
    objects = synthetic._visible_objects(scene.ids, scene.classes)
    jump = np.abs(np.diff(scene.image.astype(np.float32), axis=1)).max(axis=-1) > 60
    return float(jump[_outside_boxes(scene.ids.shape, objects)[:, 1:]].mean())


def test_hard_backgrounds_hold_distractors_with_no_label():
    easy, hard = _scenes("easy"), _scenes("hard")
    assert not any(s.clutter.any() for s in easy)
    for s in hard:
        assert s.clutter.any() and (s.ids[s.clutter] == -1).all()   # never an object's pixel
        outside = _outside_boxes(s.ids.shape, synthetic._visible_objects(s.ids, s.classes))
        assert (s.clutter & outside).any()          # distractors where no box is
    edges = lambda scenes: np.mean([_strong_edges_outside_boxes(s) for s in scenes])
    assert edges(hard) > 3 * edges(easy), (edges(hard), edges(easy))


def test_hard_labels_are_the_visible_pixels_inside_the_image():
    """The rule of easy, kept: a box is the tight box of the pixels the object still shows
    (read from the id mask), its area their count; a shape drawn later (object or
    distractor) may hide at most 35 % of what is still visible of an earlier object."""
    overlapping, small, per_image = 0, 0, []
    for s in _scenes("hard"):
        objects = synthetic._visible_objects(s.ids, s.classes)
        assert len(objects) == len(s.classes)       # nothing drawn is hidden entirely
        per_image.append(len(objects))
        for j, o in enumerate(objects):
            x, y, w, h = o["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 128 and y + h <= 128
            ys, xs = np.nonzero(s.ids == j)
            assert o["area"] == ys.size > 0
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            small += max(w, h) < 0.12 * 128
        boxes = [o["bbox"] for o in objects]
        overlapping += any(min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and
                           min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])
                           for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    assert overlapping >= 6 and small >= 6 and max(per_image) > 6, (overlapping, small,
                                                                     per_image)


def test_hard_files_say_their_level_and_an_unknown_level_is_refused(tmp_path):
    summary = synthetic.generate(tmp_path / "h", 4, 64, seed=0, difficulty="hard")
    assert summary["difficulty"] == "hard"
    info = json.loads((tmp_path / "h" / "train" / "instances.json").read_text())["info"]
    assert info["difficulty"] == "hard"
    with pytest.raises(ValueError, match=r"^difficulty must be one of easy, hard, got 'medium'$"):
        synthetic.generate(tmp_path / "m", 4, 64, seed=0, difficulty="medium")
    assert not (tmp_path / "m").exists()
    bad = subprocess.run([sys.executable, "-m", "edetgraph.data.synthetic", "--out",
                          str(tmp_path / "c"), "--difficulty", "Hard"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr == "error: difficulty must be one of easy, hard, got 'Hard'\n"


def test_training_settings_carry_the_level_and_refuse_bad_values(tmp_path):
    from edetgraph.training.config import TrainConfigError, from_dict, load_train_config
    assert load_train_config("demo").synthetic.difficulty == "easy"
    hard = load_train_config("demo", ["synthetic.difficulty=hard"])
    assert hard.synthetic.difficulty == "hard"
    bad = {"steps": 10, "synthetic": {"difficulty": "medium"}}
    with pytest.raises(TrainConfigError, match=r"^x\.yaml: synthetic\.difficulty: 'medium' not "
                                               r"one of easy, hard$"):
        from_dict(bad, "x.yaml")
    for key, value, said in (("difficulty", 2, "synthetic.difficulty"),
                             ("hardness", "hard", "synthetic.hardness: unknown key"),
                             ("val_fraction", float("nan"), "synthetic.val_fraction")):
        with pytest.raises(TrainConfigError, match=rf"^x\.yaml: {said}") as e:
            from_dict({"steps": 10, "synthetic": {key: value}}, "x.yaml")
        assert "\n" not in str(e.value)


def _search_args(tmp_path, *extra):
    return [f"--latency={tmp_path / 'm.json'}", f"--out={tmp_path / 'o'}", "--budget-ms=10",
            *extra]


@pytest.mark.parametrize("extra, words", [
    (["--data-difficulty", "medium"], "argument --data-difficulty: invalid choice: 'medium'"),
    (["--data-difficulty", "hard", "--data", "t*.tfrecord"],
     "--data-difficulty hard is for the built-in dataset; --data brings its own"),
])
def test_the_search_refuses_a_bad_data_difficulty_in_one_line(tmp_path, capsys, extra, words):
    from edetgraph import search
    try:
        code = search.main(_search_args(tmp_path, *extra))
    except SystemExit as e:          # argparse's usage error
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_the_search_generates_and_records_the_level_it_is_given(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from edetgraph import search
    ran = []

    def run(cmd, **kw):             # stands in for the generator: makes its --out folder
        ran.append(cmd)
        Path(cmd[cmd.index("--out") + 1]).mkdir(parents=True)
        return SimpleNamespace(returncode=0)
    monkeypatch.setattr(search, "subprocess", SimpleNamespace(run=run, DEVNULL=-3))
    args = search._parser().parse_args(_search_args(tmp_path, "--data-difficulty", "hard"))
    space = SimpleNamespace(image_size=[64, 96], base_data={"num_classes": 3})
    out = tmp_path / "o"
    out.mkdir()
    data = search._dataset(out, args, space)
    assert ran[0][ran[0].index("--difficulty") + 1] == "hard"
    assert data["val_json"] == str(out / "data" / "val" / "instances.json")
    default = search._parser().parse_args(_search_args(tmp_path))
    assert default.data_difficulty == "easy"
    settings = {"data_difficulty": "hard", "seeds": 1}
    search._check_settings(out, settings)                    # written
    assert json.loads((out / "settings.json").read_text()) == settings
    (out / "settings.json").write_text(json.dumps({"seeds": 1}))   # written before the flag
    search._check_settings(out, {"data_difficulty": "easy", "seeds": 1})   # resumes
    with pytest.raises(search.SearchError, match="data_difficulty 'easy' there, 'hard' here"):
        search._check_settings(out, settings)
