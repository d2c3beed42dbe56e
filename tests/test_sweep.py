"""Grids and sweeps: grid shapes, contact sheets, labelled grids, and ``sdgen sweep`` as a user
sees it (exit codes, stdout, the cells' PNGs and the grid's JSON chunk)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdgen.cli import main
from sdgen.errors import InvalidRequest
from sdgen.media.grid import GAP, contact_sheet, grid_shape, labelled_grid
from sdgen.media.metadata import parse_parameters, read_request
from sdgen.params import GenerationRequest, InputPicture
from sdgen.pipelines.sweep import SWEEP_KEY, parse_axis, sweep_requests

SIZE = 32  # generated pictures are 32x32 (16x16 latents on the tiny model): fast on a busy CPU
CELL = 64  # the smallest real cells, whose labels must still be readable


def run(*args: object) -> tuple[int, str, str]:
    """``sdgen ARGS``: (exit code, stdout, stderr); usable from module-scoped fixtures."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def tiny_args(model: Path, out: Path) -> list[object]:
    return ["--model", model, "--width", SIZE, "--height", SIZE, "--device", "cpu", "--out", out]


def pixels(path_or_image: Path | Image.Image) -> np.ndarray:
    if isinstance(path_or_image, Image.Image):
        return np.asarray(path_or_image.convert("RGB"))
    with Image.open(path_or_image) as image:
        return np.asarray(image.convert("RGB"))


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (10, 8)) -> Image.Image:
    return Image.new("RGB", size, colour)


# --- grid_shape, contact_sheet, labelled_grid ---------------------------------------------------

SHAPES = {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2), 5: (2, 3), 6: (2, 3), 7: (3, 3), 8: (3, 3)}
SHAPES.update({9: (3, 3), 10: (3, 4)})


@pytest.mark.parametrize("count", range(1, 11))
def test_grid_shape_is_near_square_without_an_empty_row(count):
    rows, cols = grid_shape(count)
    assert (rows, cols) == SHAPES[count]
    assert cols >= rows and rows * cols >= count > (rows - 1) * cols


@pytest.mark.parametrize("count", [0, -1, 2.0, True])
def test_grid_shape_refuses_a_count_that_is_not_a_positive_whole_number(count):
    with pytest.raises(InvalidRequest, match="count"):
        grid_shape(count)


def test_contact_sheet_lays_pictures_out_row_major_with_gaps():
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]
    sheet = contact_sheet([solid(c) for c in colours])
    assert sheet.size == (3 * 10 + 2 * GAP, 2 * 8 + GAP)  # 5 pictures: 2 rows of 3
    array = pixels(sheet)
    for index, colour in enumerate(colours):
        row, col = divmod(index, 3)
        x, y = col * (10 + GAP), row * (8 + GAP)
        assert (array[y : y + 8, x : x + 10] == colour).all(), index
    with pytest.raises(InvalidRequest, match="images"):
        contact_sheet([])


def test_labelled_grid_adds_label_margins_with_text_and_keeps_cells_whole():
    colours = [[(200, 0, 0), (0, 200, 0), (0, 0, 200)], [(90, 90, 0), (0, 90, 90), (90, 0, 90)]]
    cells = [[solid(c, (CELL, CELL)) for c in row] for row in colours]
    labels = ["CFG 1.1", "dpmpp_2m_karras", "strength 0.6"]  # the middle one is wrapped
    grid = labelled_grid(cells, ["steps 10", "steps 25"], labels, col_title="sampler")
    cells_w, cells_h = 3 * CELL + 2 * GAP, 2 * CELL + GAP
    left, top = grid.width - cells_w, grid.height - cells_h
    assert left > 0 and top > 0  # margins for the row labels and for the title + column labels
    array = pixels(grid)
    for r, row in enumerate(colours):
        for c, colour in enumerate(row):
            x, y = left + c * (CELL + GAP), top + r * (CELL + GAP)
            assert (array[y : y + CELL, x : x + CELL] == colour).all(), (r, c)
    assert (array[:top, left:] < 128).any(), "no text above the columns"
    assert (array[top:, :left] < 128).any(), "no text left of the rows"
    # Each column's label stays above its own column: nothing drawn above the gaps.
    for c in range(1, 3):
        gap_x = left + c * (CELL + GAP) - GAP
        assert (array[:top, gap_x : gap_x + GAP] == 255).all(), c


def test_labelled_grid_without_row_labels_has_no_left_margin():
    grid = labelled_grid([[solid((9, 9, 9), (CELL, CELL))] * 2], [""], ["seed 0", "seed 1"])
    assert grid.width == 2 * CELL + GAP and grid.height > CELL


def test_labelled_grid_refuses_labels_that_do_not_match_the_cells():
    cells = [[solid((0, 0, 0))] * 2]
    with pytest.raises(InvalidRequest, match="col_labels"):
        labelled_grid(cells, [""], ["only one"])
    with pytest.raises(InvalidRequest, match="row_labels"):
        labelled_grid(cells, ["a", "b"], ["x", "y"])
    with pytest.raises(InvalidRequest, match="cells"):
        labelled_grid([[solid((0, 0, 0))] * 2, [solid((0, 0, 0))]], ["a", "b"], ["x", "y"])


def test_generate_grid_flag_writes_a_contact_sheet(tmp_path, tiny_sd1):
    args = ["generate", "a red circle", "--seed", 7, "--num-images", 3, "--steps", 2]
    code, out, err = run(*args, "--grid", *tiny_args(tiny_sd1, tmp_path))
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert [p.name for p in paths][-1] == "0000000007-grid.png" and len(paths) == 4
    with Image.open(paths[-1]) as sheet:
        assert sheet.size == (2 * SIZE + GAP, 2 * SIZE + GAP)  # 3 pictures: 2x2, one empty
    sheet = pixels(paths[-1])
    for index, path in enumerate(paths[:3]):
        row, col = divmod(index, 2)
        x, y = col * (SIZE + GAP), row * (SIZE + GAP)
        assert (sheet[y : y + SIZE, x : x + SIZE] == pixels(path)).all(), index


# --- the sweep as data ---------------------------------------------------------------------------


def test_parse_axis_reads_comma_separated_values():
    assert parse_axis("guidance", "1.1, 3,7") == [1.1, 3.0, 7.0]
    assert parse_axis("steps", "10,25") == [10, 25]
    assert parse_axis("sampler", "Euler a,ddim") == ["Euler a", "ddim"]


@pytest.mark.parametrize(
    "name, text",
    [("guidance", "1,x"), ("steps", "10,2.5"), ("seed", ""), ("strength", "0.3,,0.6")],
)
def test_parse_axis_refuses_unparsable_or_empty_values_by_name(name, text):
    with pytest.raises(InvalidRequest) as caught:
        parse_axis(name, text)
    assert (caught.value.field, caught.value.value) == (name, text)


def test_sweep_requests_columns_then_rows_with_one_shared_seed():
    base = GenerationRequest("a circle")  # no seed: one is drawn, and shared by every cell
    cells = sweep_requests(base, [("guidance", [1.0, 7.0, 9.0]), ("sampler", ["Euler a", "ddim"])])
    assert [[(r.guidance_scale, r.sampler) for r in row] for row in cells] == [
        [(1.0, "euler_a"), (7.0, "euler_a"), (9.0, "euler_a")],
        [(1.0, "ddim"), (7.0, "ddim"), (9.0, "ddim")],
    ]
    assert len({r.seed for row in cells for r in row}) == 1 and cells[0][0].seed is not None
    assert sweep_requests(base.replace(seed=3), [("seed", [4, 5])])[0][1].seed == 5


@pytest.mark.parametrize(
    "axes, field",
    [
        ([], "sweep"),
        ([("guidance", [1.0]), ("steps", [2]), ("seed", [3])], "sweep"),
        ([("guidance", [1.0]), ("guidance", [2.0])], "sweep"),
        ([("size", [64])], "sweep"),
        ([("steps", [])], "steps"),
        ([("steps", [0, 10])], "steps"),  # validated by the request itself
        ([("guidance", [float("nan")])], "guidance_scale"),
        ([("sampler", ["nope"])], "sampler"),
        ([("strength", [0.3, 0.6])], "strength"),  # no init picture
    ],
)
def test_sweep_requests_refuses_bad_axes_by_name(axes, field):
    with pytest.raises(InvalidRequest) as caught:
        sweep_requests(GenerationRequest("a circle", seed=1), axes)
    assert caught.value.field == field


def test_sweep_requests_takes_a_strength_axis_with_an_init_picture():
    init = InputPicture.from_image(solid((50, 60, 70), (CELL, CELL)))
    base = GenerationRequest("a circle", seed=1, init_image=init)
    cells = sweep_requests(base, [("strength", [0.3, 0.6])])
    assert [r.strength for r in cells[0]] == [0.3, 0.6]
    with pytest.raises(InvalidRequest, match="strength"):
        sweep_requests(base, [("strength", [0.3, 1.5])])


# --- sdgen sweep ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guidance_by_steps(tmp_path_factory, tiny_sd1) -> tuple[Path, list[Path], Path]:
    """``sdgen sweep --guidance 1,7 --steps 2,3 --seed 3``: (model, cell paths, grid path)."""
    out = tmp_path_factory.mktemp("sweep")
    args = ["--guidance", "1,7", "--steps", "2,3", "--seed", 3]
    code, stdout, err = run("sweep", "a red circle", *args, *tiny_args(tiny_sd1, out))
    assert code == 0, err
    paths = [Path(line) for line in stdout.splitlines()]
    assert len(paths) == 5, stdout
    return tiny_sd1, paths[:4], paths[4]


def test_sweep_writes_cells_and_a_grid_with_its_layout_as_json(guidance_by_steps):
    _, cells, grid = guidance_by_steps
    assert grid.name == "sweep-0000000003.png"
    assert all(path.parent == grid.parent and path.exists() for path in cells)
    with Image.open(grid) as image:
        record = json.loads(image.text[SWEEP_KEY])
    assert [(a["name"], a["values"], a["labels"]) for a in record["axes"]] == [
        ("guidance", [1.0, 7.0], ["CFG 1", "CFG 7"]),  # columns: the first swept flag
        ("steps", [2, 3], ["steps 2", "steps 3"]),  # rows
    ]
    assert record["cells"] == [[cells[0].name, cells[1].name], [cells[2].name, cells[3].name]]


def test_sweep_grid_has_label_margins_with_text_and_the_cells(guidance_by_steps):
    _, cells, grid = guidance_by_steps
    array = pixels(grid)
    height, width = array.shape[:2]
    cells_size = 2 * SIZE + GAP
    left, top = width - cells_size, height - cells_size
    assert left > 0 and top > 0, (width, height)  # room for the row and column labels
    assert (array[:top, left:] < 128).any(), "no text above the columns"
    assert (array[top:, :left] < 128).any(), "no text left of the rows"
    for index, path in enumerate(cells):
        row, col = divmod(index, 2)
        x, y = left + col * (SIZE + GAP), top + row * (SIZE + GAP)
        assert (array[y : y + SIZE, x : x + SIZE] == pixels(path)).all(), index


def test_sweep_cells_say_their_setting_in_their_metadata(guidance_by_steps):
    _, cells, _ = guidance_by_steps
    settings = [(1.0, 2), (7.0, 2), (1.0, 3), (7.0, 3)]  # row-major: steps rows, guidance columns
    for path, (guidance, steps) in zip(cells, settings, strict=True):
        request = read_request(path)
        assert (request.guidance_scale, request.steps, request.seed) == (guidance, steps, 3)
        with Image.open(path) as image:
            fields = parse_parameters(image.text["parameters"])
        assert (fields["CFG scale"], fields["Steps"]) == (f"{guidance:g}", str(steps))


def test_sweep_cells_equal_separate_generate_runs(guidance_by_steps, tmp_path):
    model, cells, _ = guidance_by_steps
    settings = [("1", "2"), ("7", "2"), ("1", "3"), ("7", "3")]
    for index, (guidance, steps) in enumerate(settings):
        args = ["--guidance", guidance, "--steps", steps, "--seed", 3]
        code, out, err = run("generate", "a red circle", *args, *tiny_args(model, tmp_path / "g"))
        assert code == 0, err
        assert (pixels(Path(out.strip())) == pixels(cells[index])).all(), settings[index]


def test_sweep_axes_follow_the_command_line_order(tmp_path, tiny_sd1):
    args = ["--steps", "1,2", "--guidance", "1,7", "--seed", 0, "--width", 8, "--height", 8]
    code, out, err = run("sweep", "a circle", *args, "--model", tiny_sd1, "--out", tmp_path)
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    with Image.open(paths[-1]) as grid:
        record = json.loads(grid.text[SWEEP_KEY])
    assert [a["name"] for a in record["axes"]] == ["steps", "guidance"]  # columns, then rows
    settings = [(read_request(p).steps, read_request(p).guidance_scale) for p in paths[:4]]
    assert settings == [(1, 1.0), (2, 1.0), (1, 7.0), (2, 7.0)]


def test_sweep_one_axis_is_one_row(tmp_path, tiny_sd1):
    # --steps has one value: a setting, not an axis; the sampler is resolved in the labels.
    args = ["--steps", 2, "--sampler", "Euler a,ddim", "--seeds", 5]
    code, out, err = run("sweep", "a blue square", *args, *tiny_args(tiny_sd1, tmp_path))
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert [p.name for p in paths] == ["0000000005.png", "0000000005-1.png", "sweep-0000000005.png"]
    with Image.open(paths[-1]) as grid:
        record = json.loads(grid.text[SWEEP_KEY])
        assert grid.width == 2 * SIZE + GAP  # no row labels, so no left margin
    assert [(a["name"], a["labels"]) for a in record["axes"]] == [("sampler", ["euler_a", "ddim"])]
    assert [read_request(p).sampler for p in paths[:2]] == ["euler_a", "ddim"]
    assert {(read_request(p).steps, read_request(p).seed) for p in paths[:2]} == {(2, 5)}


def test_sweep_strength_axis_runs_img2img(tmp_path, tiny_sd1):
    from sdgen.pipelines.generate import PIPELINES

    if "img2img" not in PIPELINES:
        pytest.skip("img2img is not in sdgen.pipelines.generate.PIPELINES yet")
    init = tmp_path / "init.png"
    solid((30, 120, 200), (SIZE, SIZE)).save(init)
    args = ["--strength", "0.3,0.6", "--init-image", init, "--steps", 4, "--seed", 2]
    code, out, err = run("sweep", "a circle", *args, *tiny_args(tiny_sd1, tmp_path / "out"))
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert len(paths) == 3
    assert [read_request(p, {"init_image": _input(init)}).strength for p in paths[:2]] == [0.3, 0.6]


def test_sweep_clip_skip_axis(tmp_path, tiny_sd1):
    """A1111's X/Y plot axis: each cell read at its clip skip (the tiny model has 2 layers)."""
    from sdgen.models.loader import load_model
    from sdgen.pipelines.generate import generate

    args = ["--clip-skip", "1,2", "--steps", 2, "--seed", 3]
    code, out, err = run("sweep", "a circle", *args, *tiny_args(tiny_sd1, tmp_path))
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    with Image.open(paths[-1]) as grid:
        axes = json.loads(grid.text[SWEEP_KEY])["axes"]
    labels = ["clip skip 1", "clip skip 2"]
    assert [(a["name"], a["labels"]) for a in axes] == [("clip_skip", labels)]
    assert [read_request(p).clip_skip for p in paths[:2]] == [1, 2]
    alone = generate(load_model(tiny_sd1, device="cpu"), read_request(paths[1])).images[0]
    assert np.array_equal(pixels(paths[1]), pixels(alone))
    assert not np.array_equal(pixels(paths[0]), pixels(paths[1]))
    code, out, err = run("sweep", "a circle", "--clip-skip", "1,3", *tiny_args(tiny_sd1, tmp_path))
    assert code == 2 and "clip_skip: 3 is not allowed; 1 to 2" in err


def _input(path: Path) -> InputPicture:
    from sdgen.media.images import read_picture

    return read_picture(path, "init_image")


@pytest.mark.parametrize(
    "args, field",
    [
        (["--guidance", "1,x"], "guidance"),
        (["--guidance", "1,7", "--steps", "2,3", "--seeds", "0,1"], "sweep"),
        ([], "sweep"),
        (["--guidance", "7"], "sweep"),  # one value is a setting, not an axis
        (["--strength", "0.3,0.6"], "strength"),  # no --init-image
        (["--seed", 1, "--seeds", "0,1"], "seeds"),
        (["--guidance", "1,7", "--num-images", 2], "num_images"),
        (["--steps", "2,0"], "steps"),
        # found by the sampler's scheduler, before the first cell is written
        (["--sampler", "ddim,euler", "--eta", "0.5", "--steps", "2"], "eta"),
    ],
)
def test_sweep_mistakes_exit_2_with_one_line_naming_the_field(tmp_path, tiny_sd1, args, field):
    code, out, err = run("sweep", "a circle", *args, *tiny_args(tiny_sd1, tmp_path))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"sdgen: error: {field}:"), err
    assert not any(tmp_path.iterdir())  # refused before any picture is written
