"""`unet-fast segment` and segment.run: folders, bad files, --continue, atomic outputs, pixel limit, sharding."""
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.multiprocessing as mp

import ahead
import unet_fast
from tolerances import TOLERANCES
from unet_fast import cli, image_io, segment
from unet_fast.inference import predict_tiled
from unet_fast.pixel_size import read_pixel_size
from ome_zarr_files import write_ome_zarr_axes
from optional_deps import needs_zarr


TESTS = Path(__file__).resolve().parent


@pytest.fixture
def model_file(tmp_path):
    return _write_model(tmp_path)


def _write_model(folder):
    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2)
    return unet_fast.save_model(model, folder / "model.safetensors",
                                normalization=unet_fast.Normalization(mode="dtype"))


def _images(folder, count=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for i in range(count):
        image = rng.integers(0, 255, (30 + i, 41)).astype(np.uint8)
        image_io.write_image(folder / f"img{i}.tif", image)
        images[f"img{i}"] = image
    return images


@needs_zarr
def test_folder_with_bad_files(tmp_path, model_file, capsys):
    images = _images(tmp_path / "in")
    image_io.write_image(tmp_path / "in" / "photo.png", np.full((20, 25), 7, np.uint8))
    colour = np.zeros((20, 25, 3), np.uint8)
    colour[..., 1] = 1
    image_io.write_image(tmp_path / "in" / "rgb.png", colour)                                # wrong channels
    # a grey image saved as RGBA (as the 2018 Data Science Bowl ships nuclei) is read as the grey image it is
    grey = images["img1"]
    image_io.write_image(tmp_path / "in" / "grey_rgba.png", np.stack([grey] * 3 + [np.full_like(grey, 255)], -1))
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 this is not a TIFF")         # corrupt
    (tmp_path / "in" / "notes.txt").write_text("not an image, ignored")
    stack = np.random.default_rng(1).integers(0, 255, (2, 30, 33)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    status = cli.main(["segment", "-i", str(tmp_path / "in"), str(tmp_path / "st*.tif"), "-o",
                       str(tmp_path / "out"), "-m", str(model_file), "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 1
    assert "rgb.png" in err and "channel" in err and "broken.tif" in err
    assert "summary: 8 file(s) found, 6 segmented, 0 skipped (exist), 2 failed" in out and "MP/s" in out
    assert "has 3 channel(s)" in err and "the model expects 1" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["grey_rgba.tif", "img0.tif", "img1.tif", "img2.tif", "photo.tif",
                                                    "stack.tif"]
    model = unet_fast.load_model(model_file)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "grey_rgba.tif"),
                                  tifffile.imread(tmp_path / "out" / "img1.tif"))
    for name, image in images.items():
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}.tif"),
                                      predict_tiled(model, image, progress=False))
    assert tifffile.imread(tmp_path / "out" / "stack.tif").shape == (2, 30, 33)


@needs_zarr
def test_probabilities_as_ome_zarr(tmp_path, model_file):
    _images(tmp_path / "in", count=1)
    status = cli.main(["segment", "-i", str(tmp_path / "in" / "img0.tif"), "-o", str(tmp_path / "out"), "-m",
                       str(model_file), "--output", "probabilities", "--format", "ome.zarr", "--no-progress"])
    import zarr

    probabilities = zarr.open_group(str(tmp_path / "out" / "img0.ome.zarr"), mode="r")["0"][...]
    assert status == 0 and probabilities.shape == (2, 30, 41)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, rtol=TOLERANCES[torch.float32][0])


@needs_zarr
def test_ome_zarr_of_bioformats2raw_shape_t_c_z_y_x_with_one_plane(tmp_path, model_file, capsys):
    """Such a file is a 2-D image: segmented as one, with its pixel size; two extra axes of more than one
    element are refused, naming them, and the other files go on."""
    image = np.random.default_rng(6).integers(0, 255, (1, 1, 1, 37, 45)).astype(np.uint8)
    (tmp_path / "in").mkdir()
    write_ome_zarr_axes(tmp_path / "in" / "plane.ome.zarr", image)
    write_ome_zarr_axes(tmp_path / "in" / "movie.ome.zarr", np.zeros((2, 1, 3, 20, 20), np.uint8))
    status = cli.main(["segment", "-i", str(tmp_path / "in" / "plane.ome.zarr"), str(tmp_path / "in" / "movie.ome.zarr"),
                       "-o", str(tmp_path / "out"), "-m", str(model_file), "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 1 and "movie.ome.zarr" in err and "unsupported axes 'TZCYX'" in err
    labels = tifffile.imread(tmp_path / "out" / "plane.tif")
    np.testing.assert_array_equal(labels, predict_tiled(unet_fast.load_model(model_file), image[0, 0, 0],
                                                        progress=False))
    size = read_pixel_size(tmp_path / "out" / "plane.tif")
    assert (size.y, size.x) == (0.5, 0.25)


class FailsOnThirdForward(unet_fast.UNet):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("interrupted in the middle of a file")
        return super().forward(x)


@needs_zarr
def test_interrupted_file_leaves_no_output_and_continue_redoes_only_it(tmp_path, model_file, capsys):
    _images(tmp_path / "in")
    files, _ = segment.expand_inputs([str(tmp_path / "in")])
    model = FailsOnThirdForward(depth=2, base_channels=2)
    model.load_state_dict(unet_fast.load_model(model_file).state_dict())
    summary = segment.segment_files(files, tmp_path / "out", model, tile_size=20, resume=False)
    assert len(summary.failed) == 1 and "interrupted" in summary.failed[0][1]
    failed = segment.output_name(__import__("pathlib").Path(summary.failed[0][0]), ".tif")
    assert failed not in os.listdir(tmp_path / "out") and len(os.listdir(tmp_path / "out")) == 2  # no partials
    before = {n: os.stat(tmp_path / "out" / n).st_mtime_ns for n in os.listdir(tmp_path / "out")}
    status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                       "--continue", "--no-progress"])
    assert status == 0 and "1 segmented, 2 skipped" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["img0.tif", "img1.tif", "img2.tif"]
    assert all(os.stat(tmp_path / "out" / n).st_mtime_ns == t for n, t in before.items())


@pytest.mark.parametrize("fmt", ["tif", "ome.zarr"])
def test_continue_segments_again_an_input_replaced_by_one_of_another_size(tmp_path, model_file, capsys, fmt):
    """--continue compares settings, not images: an input replaced since kept its old output, even of another
    size. Headers tell that case: it is segmented again, and said; the unchanged inputs are kept."""
    _images(tmp_path / "in")
    arguments = ["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                 "--format", fmt, "--no-progress"]
    assert cli.main(arguments) == 0
    image_io.write_image(tmp_path / "in" / "img1.tif", np.full((45, 52), 9, np.uint8))
    capsys.readouterr()
    assert cli.main([*arguments, "--continue"]) == 0
    out = capsys.readouterr().out
    assert "1 segmented, 2 skipped" in out and f"of another size than {tmp_path / 'in' / 'img1.tif'}" in out
    assert image_io.image_info(tmp_path / "out" / f"img1.{fmt}").shape[-2:] == (45, 52)


@pytest.mark.parametrize("output, scale", [("instances", 1.0), ("labels", 2.0)])
def test_scratch_files_a_killed_run_leaves_beside_its_output_are_removed_by_continue(tmp_path, model_file,
                                                                                        monkeypatch, output, scale):
    """A large result goes through scratch files beside its output (instances; the logits of a resampled image):
    what a run killed meanwhile (SIGKILL, a power cut) leaves of them is named after the output, and --continue
    removes it with the output's other leftovers. They were in a folder named for no output (instances), left in
    the output folder for good (8 bytes a pixel of the image), or in the system's temporary folder (resampled)."""
    from unet_fast import instances

    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 0)        # scratch on disk, as for a large image
    (tmp_path / "in").mkdir()
    image_io.write_image(tmp_path / "in" / "img.tif", np.random.default_rng(0).integers(0, 255, (40, 50), np.uint8))
    out, killed = tmp_path / "out", tmp_path / "killed"
    out.mkdir()

    def kill(fraction):     # the output folder as a SIGKILL during the network's tiles leaves it
        if not killed.exists():
            shutil.copytree(out, killed)

    predict_tiled(unet_fast.load_model(model_file), image_io.read_image(tmp_path / "in" / "img.tif")[0],
                  output=output, out=out / "img.tif", scale=scale, progress=kill)
    assert any(name.endswith(".partial.scratch") for name in os.listdir(killed))
    assert os.listdir(out) == ["img.tif"]
    status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(killed), "-m", str(model_file), "--continue",
                       "--no-progress", "--output", output, "--scale", str(scale)])
    assert status == 0 and os.listdir(killed) == ["img.tif"]


@needs_zarr
def test_pixel_limit_refuses_large_files_streamable_or_not(tmp_path, model_file, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    image_io.write_image(folder / "bomb.png", np.zeros((60, 60), np.uint8))
    tifffile.imwrite(folder / "strips.tif", np.zeros((60, 60), np.uint8), rowsperstrip=4)
    tifffile.imwrite(folder / "small.tif", np.zeros((30, 30), np.uint8), rowsperstrip=4)
    status = cli.main(["segment", "-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(model_file),
                       "--max-pixels", "1000", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 1 and "bomb.png" in err and "ImageTooLargeError" in err
    assert "strips.tif" in err and "raise the limit to at least 3600" in err
    assert os.listdir(tmp_path / "out") == ["small.tif"]
    status = cli.main(["segment", "-i", str(folder / "strips.tif"), "-o", str(tmp_path / "out"), "-m",
                       str(model_file), "--max-pixels", "3600", "--no-progress"])
    assert status == 0 and sorted(os.listdir(tmp_path / "out")) == ["small.tif", "strips.tif"]


@needs_zarr
def test_num_parts_cover_every_file_once(tmp_path, model_file):
    _images(tmp_path / "in", count=5)
    seen = []
    for part in range(2):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / f"out{part}"), "-m",
                           str(model_file), "--num-parts", "2", "--part-id", str(part), "--no-progress"])
        assert status == 0
        seen += os.listdir(tmp_path / f"out{part}")
    assert sorted(seen) == [f"img{i}.tif" for i in range(5)]


def test_parts_of_a_job_array_share_a_list_of_inputs_given_as_at_file(tmp_path, model_file):
    """-i @LIST: the inputs LIST names, one per line (spaces kept, blank lines none). The parts of a job array
    that share it cover every listed file once even when the folder changes between the parts' starts."""
    _images(tmp_path / "in", count=5)
    (tmp_path / "in" / "img0.tif").rename(tmp_path / "in" / "img 0.tif")
    listed = sorted(str(path) for path in (tmp_path / "in").iterdir())
    (tmp_path / "list.txt").write_text("\n".join(listed[:2]) + "\n\n  \n" + "\n".join(listed[2:]) + "\n")
    arguments = ["segment", "-i", f"@{tmp_path / 'list.txt'}", "-o", str(tmp_path / "out"), "-m", str(model_file),
                 "--num-parts", "2", "--no-progress"]
    assert cli.main([*arguments, "--part-id", "0"]) == 0
    image_io.write_image(tmp_path / "in" / "img00.tif", np.zeros((30, 41), np.uint8))   # after part 0 listed
    assert cli.main([*arguments, "--part-id", "1"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["img 0.tif", "img1.tif", "img2.tif", "img3.tif", "img4.tif"]


def test_inputs_given_with_several_flags_are_all_segmented(tmp_path, model_file):
    """-i a -i b segmented b alone (argparse's nargs="+" keeps the last flag's list), silently."""
    _images(tmp_path / "in", count=3)
    assert cli.main(["segment", "-i", str(tmp_path / "in" / "img0.tif"), "-i", str(tmp_path / "in" / "img1.tif"),
                     str(tmp_path / "in" / "img2.tif"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["img0.tif", "img1.tif", "img2.tif"]


@pytest.mark.parametrize("content, reason", [(None, "No such file or directory"), ("folder", "Is a directory"),
                                             (b"II*\x00\xff\xfe\x00", "can't decode byte"),
                                             (b"a" * 65, "over 0 MiB")])
def test_an_at_file_that_is_no_list_is_refused_naming_it(tmp_path, model_file, capsys, monkeypatch, content,
                                                           reason):
    """A missing list, a folder, a binary file (a TIFF named by mistake: a UnicodeDecodeError traceback from
    argparse) and one too large to be a list (/dev/zero) are one-line errors naming the @argument."""
    path = tmp_path / "list"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    monkeypatch.setattr(cli, "_LIST_BYTES", 64)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["segment", "-i", f"@{path}", "-o", str(tmp_path / "out"), "-m", str(model_file)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: @{path}: cannot read the list" in err and reason in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_parts_agree_on_which_file_owns_an_output_name(tmp_path, model_file, capsys):
    """a.png and a.tif both make out/a.tif: the first in order owns it, and the other fails in whichever part
    it lands (each part once replaced the other's output and both reported success)."""
    (tmp_path / "in").mkdir()
    image_io.write_image(tmp_path / "in" / "a.png", np.full((20, 25), 200, np.uint8))
    image_io.write_image(tmp_path / "in" / "a.tif", np.zeros((31, 17), np.uint8))
    statuses = [cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                          "--num-parts", "2", "--part-id", str(part), "--no-progress"]) for part in range(2)]
    assert statuses == [0, 1]
    assert f"FAILED {tmp_path / 'in' / 'a.tif'}: output {tmp_path / 'out' / 'a.tif'} is also the output of " \
           f"{tmp_path / 'in' / 'a.png'}" in capsys.readouterr().err
    assert tifffile.imread(tmp_path / "out" / "a.tif").shape == (20, 25)


@needs_zarr
@pytest.mark.parametrize("fmt", ["tif", "ome.zarr"])
def test_a_file_in_the_output_folder_that_segment_did_not_write_is_never_replaced(tmp_path, model_file, capsys,
                                                                                  fmt):
    _images(tmp_path / "in", count=2)
    (tmp_path / "out").mkdir()
    if fmt == "tif":     # the user's own labels, under the name an output would take
        mine = tmp_path / "out" / "img1.tif"
        tifffile.imwrite(mine, np.arange(31 * 41, dtype=np.uint16).reshape(31, 41))
    else:                # a folder of notes named like an output
        mine = tmp_path / "out" / "img1.ome.zarr" / "notes.txt"
        mine.parent.mkdir()
        mine.write_text("precious")
    before = mine.read_bytes()
    arguments = ["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                 "--format", fmt, "--no-progress"]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert "--output-dir" in err and "did not write" in err and "nothing was written" in err
    assert mine.read_bytes() == before and sorted(os.listdir(tmp_path / "out")) == [f"img1.{fmt}"]
    mine.unlink() if fmt == "tif" else shutil.rmtree(mine.parent)
    assert cli.main(arguments) == 0
    assert cli.main(arguments) == 0        # its own outputs it replaces


def test_bad_arguments(tmp_path, model_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["segment", "-i", "x", "-o", str(tmp_path), "-m", str(model_file), "--num-parts", "2"])
    assert exit_.value.code == 2
    assert "--num-parts and --part-id go together" in capsys.readouterr().err
    # a usage error main returns (argparse's exit before): one line naming --part-id
    assert cli.main(["segment", "-i", "x", "-o", str(tmp_path), "-m", str(model_file), "--num-parts", "2",
                     "--part-id", "2"]) == 2
    with pytest.raises(ValueError, match=r"part_id must be in \[0, 2\), got 2"):
        segment.run([tmp_path], tmp_path / "o", model_file, num_parts=2, part_id=2)
    with pytest.raises(ValueError, match="format must be one of"):
        segment.run([tmp_path], tmp_path / "o", model_file, format="png")
    # no input gives an image: a usage error naming -i (it was exit 1, a FAILED line, and an empty -o made)
    assert cli.main(["segment", "-i", str(tmp_path / "nothing*.tif"), "-o", str(tmp_path / "o"), "-m",
                     str(model_file), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "argument -i/--input: no image to segment" in err and "no such file" in err
    assert not (tmp_path / "o").exists()


def test_a_resumed_run_shares_the_files_still_to_segment_among_the_ranks():
    """--continue under torchrun sharded every file: after a stop at half, rank 0 had its 4 files done and rank 1
    its 4 still to segment. Every file is still one rank's, and one process keeps the order."""
    files = [Path(f"img{i}.tif") for i in range(8)]
    done = set(files[0::2])         # every other file: one rank's whole share, sharded as one list
    shares = [segment.rank_share(files, rank, 2, done) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(files)
    assert [len([path for path in share if path not in done]) for share in shares] == [2, 2]
    assert segment.shard(files, 0, 2) == sorted(done)          # (the share it had before)
    assert segment.rank_share(files, 0, 1, done) == files
    assert [segment.rank_share(files[:3], rank, 3, set()) for rank in range(3)] == [[f] for f in files[:3]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The torch.distributed tests spawn their 2 ranks (torch.multiprocessing, as a user's script would) from a
# command started ahead, beside the suite (tests/ahead.py): `python -c` imports this module and calls the
# test's ``ranks(folder)`` there, in a folder holding the model and the test's images; the test then checks
# what the ranks wrote.
def _spawning(ranks, count):
    def build(folder):
        folder = Path(folder)
        _images(folder / "in", count=count)
        with torch.random.fork_rng(devices=[]):        # at collection's end: the suite's random state stays
            _write_model(folder)
        code = (f"import sys; sys.path[:0] = [{str(TESTS.parent)!r}, {str(TESTS)!r}]; "
                f"import {ranks.__module__} as tests; tests.{ranks.__name__}(sys.argv[1])")
        return [sys.executable, "-c", code, str(folder)], {"cwd": folder}, None
    return ahead.Command("segment-" + ranks.__name__.strip("_").replace("_", "-"), build, timeout=240)


def _spawned(command) -> Path:
    """The folder of ``command``'s run; the test fails with its output if it failed or hung."""
    run = command.result()
    assert run.done.returncode == 0, f"the ranks failed:\n{run.done.stdout}\n{run.done.stderr}"
    return Path(run.folder)


def _arguments(folder):
    return dict(inputs=[folder / "in"], output_dir=folder / "out", model=folder / "model.safetensors",
                progress=False)


def _rank_main(rank, world, port, arguments, report):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = segment.run(**arguments)
    summary, status = result.summary, result.exit_status
    with open(f"{report}.{rank}.json", "w") as f:
        json.dump({"done": summary.done, "status": status}, f)


def _shard_ranks(folder):
    folder = Path(folder)
    mp.spawn(_rank_main, args=(2, _free_port(), _arguments(folder), str(folder / "report")), nprocs=2, join=True)


SHARDS = _spawning(_shard_ranks, count=5)


@needs_zarr
@pytest.mark.slow
@SHARDS.mark
def test_torch_distributed_gloo_shards_cover_every_file_once():
    folder = _spawned(SHARDS)
    reports = [json.load(open(folder / f"report.{rank}.json")) for rank in range(2)]
    done = reports[0]["done"] + reports[1]["done"]
    assert all(r["status"] == 0 for r in reports) and reports[0]["done"] and reports[1]["done"]
    assert sorted(done) == sorted(str(folder / "in" / f"img{i}.tif") for i in range(5))
    assert sorted(os.listdir(folder / "out")) == [f"img{i}.tif" for i in range(5)]


def _rank_main_listing_late(rank, world, port, arguments, report):
    """A rank that lists the inputs after a file appeared (a microscope still writing, an NFS listing that lags
    on one node): rank 0 does not see img2.tif, rank 1 does."""
    listed = segment.expand_inputs

    def listed_before_img2(inputs, **options):
        files, problems = listed(inputs, **options)
        return [path for path in files if path.name != "img2.tif"], problems

    if rank == 0:
        segment.expand_inputs = listed_before_img2
    _rank_main(rank, world, port, arguments, report)


def _listing_late_ranks(folder):
    folder = Path(folder)
    mp.spawn(_rank_main_listing_late, args=(2, _free_port(), _arguments(folder), str(folder / "report")), nprocs=2,
             join=True)


LISTING_LATE = _spawning(_listing_late_ranks, count=5)


@needs_zarr
@pytest.mark.slow
@LISTING_LATE.mark
def test_torch_distributed_ranks_segment_rank_0s_listing():
    """Each rank listed the inputs itself and took every world-th file of its own list: where the lists differed,
    a file was segmented by two ranks (each removing the other's partial file as a leftover) and another by none.
    Every rank now shares rank 0's list."""
    folder = _spawned(LISTING_LATE)
    reports = [json.load(open(folder / f"report.{rank}.json")) for rank in range(2)]
    done = reports[0]["done"] + reports[1]["done"]
    assert sorted(done) == sorted(str(folder / "in" / f"img{i}.tif") for i in (0, 1, 3, 4))
    assert sorted(os.listdir(folder / "out")) == [f"img{i}.tif" for i in (0, 1, 3, 4)]


def _rank_main_lives_on(rank, world, port, arguments, report):
    """One rank of ``segment`` that records its result or error, then lives on (as in a notebook) until
    every rank has reported: a rank still waiting in a collective for a failed one never would."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    try:
        result = {"status": segment.run(**arguments[rank]).exit_status}
    except Exception as error:
        result = {"error": type(error).__name__, "message": str(error)}
    with open(f"{report}.{rank}.json", "w") as f:
        json.dump(result, f)
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{report}.{r}.json") for r in range(world)) and time.monotonic() < deadline:
        time.sleep(0.05)


def _failed_rank_ranks(folder):
    """Writes hung.json: the ranks still running after 50 s (killed then)."""
    folder = Path(folder)
    arguments = _arguments(folder)
    arguments = [arguments, {**arguments, "model": folder / "elsewhere.safetensors"}]
    report = str(folder / "report")
    context = mp.spawn(_rank_main_lives_on, args=(2, _free_port(), arguments, report), nprocs=2, join=False)
    deadline = time.monotonic() + 50            # less than the ranks' own 60 s of living on
    while not context.join(timeout=1) and time.monotonic() < deadline:
        pass
    hung = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
    for process in context.processes:
        process.kill()
    (folder / "hung.json").write_text(json.dumps(hung))


FAILED_RANK = _spawning(_failed_rank_ranks, count=4)


@needs_zarr
@pytest.mark.slow
@FAILED_RANK.mark
def test_torch_distributed_a_failed_rank_stops_the_others():
    """Rank 1 cannot read the model (absent on its node): rank 0 segments its share, then raises
    naming rank 1, instead of waiting for it at the summary for ever."""
    folder = _spawned(FAILED_RANK)
    report = str(folder / "report")
    hung = json.loads((folder / "hung.json").read_text())
    assert not hung, f"ranks {hung} still running after 50 s"
    reports = [json.load(open(f"{report}.{rank}.json")) for rank in range(2)]
    # a usage error naming the argument, as a model file that cannot be read is in one process
    assert reports[1]["error"] == "BadArgument" and reports[1]["message"].startswith("model file '"), reports
    assert reports[1]["message"].endswith("elsewhere.safetensors' does not exist"), reports
    assert reports[0]["error"] == "RankFailedError", reports
    assert "rank 1 failed (BadArgument: model file" in reports[0]["message"]
    assert sorted(os.listdir(folder / "out")) == ["img0.tif", "img2.tif"]     # rank 0's share is done


@needs_zarr  # reads its TIFF inputs lazily
def test_run_from_python_with_a_loaded_model(tmp_path, model_file):
    """segment.run takes keyword arguments and a model object, reports counts and never exits."""
    _images(tmp_path / "in", count=2)
    lines = []
    result = segment.run([tmp_path / "in", tmp_path / "missing*.tif"], tmp_path / "out",
                         unet_fast.load_model(model_file), tile_size=20, progress=False,
                         log=lambda *args, **kwargs: lines.append(" ".join(map(str, args))))
    assert (result.found, result.segmented, result.skipped, result.failed) == (2, 2, 0, 1)
    assert result.exit_status == 1 and result.pixels == 30 * 41 + 31 * 41
    assert sorted(os.listdir(tmp_path / "out")) == ["img0.tif", "img1.tif"]
    assert any("FAILED" in line and "missing" in line for line in lines) and "summary" in lines[-1]


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_zarr
@pytest.mark.parametrize("format", ["tif", "ome.zarr"])
def test_an_output_folder_inside_an_ome_zarr_input_is_refused(tmp_path, model_file, capsys, format):
    """segment -i a.ome.zarr -o a.ome.zarr/out used to write the results into the user's OME-Zarr image."""
    from unet_fast.sinks import StreamingZarrWriter

    writer = StreamingZarrWriter(tmp_path / "a.ome.zarr", (30, 41), np.uint8)
    writer.write(0, 0, 0, np.random.default_rng(0).integers(0, 255, (30, 41)).astype(np.uint8))
    writer.close()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    status = cli.main(["segment", "-i", str(tmp_path / "a.ome.zarr"), "-o", str(tmp_path / "a.ome.zarr" / "out"),
                       "-m", str(model_file), "--format", format, "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and "argument -o/--output-dir" in err and "lies inside the input" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_overlay_that_would_replace_an_input_is_refused(tmp_path, model_file, capsys):
    """segment -i p/overlays -o p --overlay used to replace p/overlays/*.png by their own overlays; an
    overlay path that is a hard link of an input is refused too."""
    p = tmp_path / "p"
    (p / "overlays").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        image_io.write_image(p / "overlays" / f"img{i}.png", rng.integers(0, 255, (30, 41)).astype(np.uint8))
    linked = tmp_path / "linked"
    (linked / "overlays").mkdir(parents=True)
    os.link(p / "overlays" / "img1.png", linked / "overlays" / "img1.png")
    for out in (p, linked):
        before = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
        status = cli.main(["segment", "-i", str(p / "overlays"), "-o", str(out), "-m", str(model_file), "--overlay",
                           "--no-progress"])
        err = capsys.readouterr().err
        assert status == 2 and "argument -o/--output-dir:" in err and "the overlay for" in err, err
        assert len(err.strip().splitlines()) == 1
        assert {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()} == before
        assert not list(out.glob("*.tif"))
    # without --overlay nothing collides: the outputs are p/img0.tif, p/img1.tif
    assert cli.main(["segment", "-i", str(p / "overlays"), "-o", str(p), "-m", str(model_file), "--no-progress"]) == 0


def test_overlay_replaces_only_overlays_unet_fast_wrote(tmp_path, model_file, capsys):
    """segment --overlay used to replace out/overlays/<name>.png whatever it was; now only an overlay that carries
    the marker (a PNG text chunk) is replaced: a user's file, folder or symlink there is refused up front, and
    --continue refuses only where it would write an overlay."""
    from unet_fast import overlays

    _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model_file), "--no-progress", "--overlay"]
    assert cli.main(argv) == 0
    drawn = out / "overlays" / "img1.png"
    assert all(overlays.written_by_unet_fast(out / "overlays" / f"img{i}.png") for i in range(3))
    before = drawn.stat().st_ino
    assert cli.main(argv) == 0 and drawn.stat().st_ino != before        # its own overlays: replaced, atomically
    mine = tmp_path / "mine.png"
    image_io.write_image(mine, np.full((8, 8), 7, np.uint8))
    for what, place in [("a file", lambda: shutil.copy(mine, drawn)), ("a folder", drawn.mkdir),
                        ("a symlink", lambda: drawn.symlink_to(mine)),
                        ("a symlink", lambda: drawn.symlink_to(tmp_path / "nowhere.png"))]:
        drawn.unlink() if drawn.is_symlink() or drawn.is_file() else drawn.rmdir()
        place()
        outputs, ours = _mtimes(out), mine.read_bytes()
        status = cli.main(argv)
        err = capsys.readouterr().err
        assert status == 2 and "argument -o/--output-dir: the overlay" in err and f"would replace {what}" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert _mtimes(out) == outputs and mine.read_bytes() == ours
        assert drawn.is_symlink() == (what == "a symlink") and drawn.is_dir() == (what == "a folder")
    drawn.unlink()
    shutil.copy(mine, drawn)
    assert cli.main(argv + ["--continue"]) == 0         # every output kept: no overlay written, the user's file kept
    assert "0 segmented, 3 skipped" in capsys.readouterr().out and drawn.read_bytes() == mine.read_bytes()
    (out / "img1.tif").unlink()                           # img1 would be segmented and its overlay written
    assert cli.main(argv + ["--continue"]) == 2
    assert "argument -o/--output-dir: the overlay" in capsys.readouterr().err and not (out / "img1.tif").exists()


def test_continue_draws_missing_overlays_from_existing_outputs(tmp_path, model_file, capsys):
    _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model_file), "--no-progress",
            "--output", "instances"]
    assert cli.main(argv) == 0                                   # a first run without --overlay
    outputs = _mtimes(out)
    assert cli.main(argv + ["--continue", "--overlay"]) == 0
    assert "0 segmented, 3 skipped" in capsys.readouterr().out
    assert sorted(os.listdir(out / "overlays")) == ["img0.png", "img1.png", "img2.png"]
    drawn = (out / "overlays" / "img1.png").read_bytes()
    (out / "overlays" / "img1.png").unlink()                     # as if interrupted between output and overlay
    assert cli.main(argv + ["--continue", "--overlay"]) == 0
    assert (out / "overlays" / "img1.png").read_bytes() == drawn
    assert all(_mtimes(out)[path] == mtime for path, mtime in outputs.items())    # the outputs kept as they were
    fresh = tmp_path / "fresh"
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(fresh), "-m", str(model_file), "--no-progress",
                     "--output", "instances", "--overlay"]) == 0
    assert (fresh / "overlays" / "img1.png").read_bytes() == drawn     # the same as drawn while segmenting


def test_an_output_replaced_takes_its_old_overlay_with_it(tmp_path, model_file, capsys):
    """An overlay outlines the output it was drawn from. A run that replaced the outputs (another model) without
    --overlay, or was killed between an output and its overlay, left the old overlay beside the new output, and
    --continue --overlay kept it (it exists): the overlays showed another model's result. Replacing an output now
    removes its overlay (if segment drew it), so that --continue --overlay draws it from the output there."""
    _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", "-i", str(tmp_path / "in"), "-o", str(out), "--no-progress"]
    torch.manual_seed(1)
    other = unet_fast.save_model(unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2),
                                 tmp_path / "other.safetensors", normalization=unet_fast.Normalization(mode="dtype"))
    assert cli.main(argv + ["-m", str(other), "--overlay"]) == 0
    assert cli.main(argv + ["-m", str(model_file)]) == 0                 # replaced by another model's outputs
    assert cli.main(argv + ["-m", str(model_file), "--overlay", "--continue"]) == 0
    assert "0 segmented, 3 skipped" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(fresh), "-m", str(model_file), "--no-progress",
                     "--overlay"]) == 0
    for i in range(3):
        assert (out / "overlays" / f"img{i}.png").read_bytes() == (fresh / "overlays" / f"img{i}.png").read_bytes()


@pytest.mark.parametrize("fmt", ["tif", pytest.param("ome.zarr", marks=needs_zarr)])
def test_continue_never_keeps_an_output_of_another_kind(tmp_path, model_file, capsys, fmt):
    _images(tmp_path / "in")
    out = tmp_path / "out"

    def segment_(output, *more):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model_file),
                           "--no-progress", "--format", fmt, "--output", output, *more])
        return status, capsys.readouterr()

    assert segment_("labels")[0] == 0
    before = _mtimes(out)
    for output in ("instances", "probabilities"):
        status, captured = segment_(output, "--continue")
        assert status == 2 and "argument --continue:" in captured.err and f"holds labels, not {output}" in \
            captured.err, captured.err
        assert _mtimes(out) == before                            # refused before anything was segmented
    status, captured = segment_("labels", "--continue")
    assert status == 0 and "0 segmented, 3 skipped" in captured.out
    assert segment_("instances")[0] == 0                         # without --continue: replaced
    status, captured = segment_("instances", "--continue")
    assert status == 0 and "0 segmented, 3 skipped" in captured.out
    assert segment_("labels", "--continue")[0] == 2
    ext = segment.OUTPUT_SUFFIXES[fmt]
    assert [segment.output_kind(out / f"img0{ext}")] == ["instances"]
    assert segment_("probabilities")[0] == 0 and segment.output_kind(out / f"img0{ext}") == "probabilities"


@needs_zarr
@pytest.mark.parametrize("output", ["labels", "instances", "probabilities"])
def test_continue_keeps_ome_zarr_outputs_with_pyramid_levels(tmp_path, model_file, capsys, monkeypatch, output):
    """An OME-Zarr output has pyramid levels (datasets 1, 2, ...) beside level 0: its kind is still told by level 0
    (and "image-label"), its provenance by the group's attribute, so --continue keeps it and refuses other kinds."""
    import zarr

    from unet_fast import sinks

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    _images(tmp_path / "in")
    out = tmp_path / "out"

    def segment_(kind, *more):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model_file),
                           "--no-progress", "--format", "ome.zarr", "--output", kind, *more])
        return status, capsys.readouterr()

    assert segment_(output, *(["--overlay"] if output != "probabilities" else []))[0] == 0
    result = out / "img0.ome.zarr"
    group = zarr.open_group(str(result), mode="r")
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["0", "1", "2"]    # 30 x 41 to 8 x 11
    assert group["2"].shape[-2:] == (8, 11)
    assert segment.output_kind(result) == output and sinks.read_provenance(result)["output"] == output
    before = _mtimes(out)
    status, captured = segment_(output, "--continue")
    assert status == 0 and "0 segmented, 3 skipped" in captured.out and _mtimes(out) == before
    other = "probabilities" if output != "probabilities" else "labels"
    status, captured = segment_(other, "--continue")
    assert status == 2 and f"holds {output}, not {other}" in captured.err, captured.err


def test_an_output_that_is_a_folder_fails_that_file_at_once(tmp_path, model_file, capsys, monkeypatch):
    _images(tmp_path / "in")
    (tmp_path / "out" / "img1.tif").mkdir(parents=True)
    segmented = []
    real = segment.predict_tiled
    monkeypatch.setattr(segment, "predict_tiled", lambda model, image, **kw: segmented.append(kw["out"].name)
                        or real(model, image, **kw))
    for more in ([], ["--continue"]):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                           "--no-progress", *more])
        captured = capsys.readouterr()
        assert status == 1 and "img1.tif is a folder" in captured.err and "1 failed" in captured.out, captured
    assert "img1.tif" not in segmented and segmented.count("img0.tif") == 1
    assert (tmp_path / "out" / "img1.tif").is_dir() and os.listdir(tmp_path / "out" / "img1.tif") == []


@pytest.mark.parametrize("fmt", ["tif", pytest.param("ome.zarr", marks=needs_zarr)])
def test_outputs_record_how_they_were_made_and_continue_keeps_only_the_same(tmp_path, model_file, capsys, fmt):
    """Every output records the weights' digest and the settings (sinks.read_provenance); --continue refuses
    an output made with other settings or another model instead of silently mixing them."""
    from unet_fast.sinks import read_provenance

    _images(tmp_path / "in")
    out = tmp_path / "out"

    def segment_(*more, model=model_file):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model),
                           "--no-progress", "--format", fmt, "--output", "instances", *more])
        return status, capsys.readouterr()

    assert segment_("--min-size", "3")[0] == 0
    recorded = read_provenance(out / f"img0{segment.OUTPUT_SUFFIXES[fmt]}")
    assert recorded["output"] == "instances" and recorded["tta"] is False and recorded["scale"] == 1.0
    assert recorded["instance_options"]["min_size"] == 3 and len(recorded["weights_sha256"]) == 64
    before = _mtimes(out)
    status, captured = segment_("--min-size", "3", "--continue")
    assert status == 0 and "0 segmented, 3 skipped" in captured.out
    for more, named in ((("--min-size", "3", "--tta"), "tta False there, True now"),
                        (("--continue",), "instance_options.min_size 3 there, 15 now"),
                        (("--min-size", "3", "--smoothing", "2"), "instance_options.smoothing 1.5 there, 2.0 now"),
                        (("--min-size", "3", "--scale", "2"), "scale 1.0 there, 2.0 now")):
        status, captured = segment_(*more, *(() if "--continue" in more else ("--continue",)))
        assert status == 2 and "argument --continue:" in captured.err and named in captured.err, captured.err
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    unet_fast.save_model(unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2), other,
                         normalization=unet_fast.Normalization(mode="dtype"))
    status, captured = segment_("--min-size", "3", "--continue", model=other)
    assert status == 2 and "the model's weights" in captured.err
    assert _mtimes(out) == before                                  # every refusal before any work
    # an output that records nothing (another tool's, or an older version's) is kept by its kind alone
    assert read_provenance(tmp_path / "in" / "img0.tif") is None


def test_continue_takes_outputs_from_before_smoothing_as_unsmoothed(tmp_path, model_file, capsys, monkeypatch):
    """Outputs written before the instance rules had ``smoothing`` record none: they were made unsmoothed, so
    --continue keeps them for --no-split (unsmoothed today too) and refuses them for the default rules."""
    from unet_fast import sinks

    _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model_file), "--no-progress",
            "--output", "instances"]
    assert cli.main([*argv, "--no-split"]) == 0

    def older(path):
        recorded = sinks.read_provenance(path)
        del recorded["instance_options"]["smoothing"]
        return recorded

    monkeypatch.setattr(segment, "read_provenance", older)
    capsys.readouterr()
    assert cli.main([*argv, "--no-split", "--continue"]) == 0 and "0 segmented, 3 skipped" in capsys.readouterr().out
    status, captured = None, None
    try:
        status = cli.main([*argv, "--continue"])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and "instance_options.smoothing 0.0 there, 1.5 now" in err and \
        "instance_options.split None there, 0.95 now" in err, err


def test_provenance_records_the_instance_rules_on_the_images_grid():
    """Outputs record the rules as applied (network pixels converted by the scale), so --continue refuses to
    mix an output of an older version (rules in image pixels) with one made now, by a model that resamples."""
    model = unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2)
    model.input_scale = 0.5
    made = dict(output="instances", tta=False, dtype=None, instance_options=None)
    rules = segment.provenance(model, scale=None, **made)["instance_options"]
    assert (rules["min_size"], rules["border"], rules["core_size"]) == (60, 4, 20)
    rules = segment.provenance(model, scale=1.0, **made)["instance_options"]
    assert (rules["min_size"], rules["border"], rules["core_size"]) == (15, 2, 5)


@pytest.mark.parametrize("output, scale", [("labels", None), ("probabilities", None), ("labels", 1.5),
                                           ("instances", 0.7)])
def test_predict_tiled_records_provenance_in_files(tmp_path, model_file, output, scale):
    from unet_fast.sinks import read_provenance

    model = unet_fast.load_model(model_file)
    image = np.random.default_rng(1).integers(0, 255, (40, 33)).astype(np.uint8)
    for suffix in (".tif",) + ((".zarr",) if segment.OUTPUT_SUFFIXES["ome.zarr"] else ()):
        try:
            path = predict_tiled(model, image, output=output, scale=scale, out=tmp_path / f"r{suffix}",
                                 provenance={"note": "made here", "n": [1, 2]}, progress=False)
        except ImportError:       # no zarr
            continue
        assert read_provenance(path) == {"note": "made here", "n": [1, 2]}


@needs_zarr
def test_small_files_of_one_shape_are_segmented_together_with_the_same_results(tmp_path, model_file, capsys,
                                                                                 monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = {}
    for i in range(5):     # four of one shape, of very different ranges; a large one and a NaN one between
        name = ["a0", "a1", "b_large", "c_nan", "d0"][i]
        image = rng.normal(0.3 + 0.1 * i, 0.2, (40, 50) if name != "b_large" else (70, 90)).astype(np.float32)
        if name == "c_nan":
            image[3, 4] = np.nan
        tifffile.imwrite(folder / f"{name}.tif", image, resolution=(1 / (0.5 + i), 1 / (0.5 + i)),
                         metadata={"unit": "um"}, photometric="minisblack")
        images[name] = image
    image_io.write_image(folder / "e1.tif", (images["d0"] * 100).astype(np.uint16))
    monkeypatch.setattr(segment, "SMALL_FILE_PIXELS", 40 * 50)      # the large one is segmented alone
    status = cli.main(["segment", "-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(model_file),
                       "--output", "instances", "--overlay", "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 1 and "c_nan.tif" in err and "NaN" in err and err.count("FAILED") == 1
    # a0 and a1 together; b_large alone; c_nan, d0 and e1 together, which fails, so each again on its own
    assert out.count("for a batch of 2 files") == 2 and "batch of 3" not in out
    assert all(f"{name}.tif" in out for name in ("b_large", "d0", "e1"))
    assert "5 segmented, 0 skipped (exist), 1 failed" in out
    model = unet_fast.load_model(model_file)
    images["e1"] = (images.pop("d0") * 100).astype(np.uint16)
    images["d0"] = tifffile.imread(folder / "d0.tif")
    for name, image in images.items():
        if name == "c_nan":
            assert not (tmp_path / "out" / f"{name}.tif").exists()
            continue
        written = tmp_path / "out" / f"{name}.tif"
        np.testing.assert_array_equal(tifffile.imread(written),
                                      predict_tiled(model, image, output="instances", progress=False))
        assert (tmp_path / "out" / "overlays" / f"{name}.png").exists()
        assert read_pixel_size(written) == read_pixel_size(folder / f"{name}.tif")
    status = cli.main(["segment", "-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(model_file),
                       "--output", "instances", "--continue", "--no-progress", "--nonfinite", "zero"])
    assert status == 0 and "1 segmented, 5 skipped" in capsys.readouterr().out


def test_batched_files_keep_their_lines_in_order_and_never_replace_inputs(tmp_path, model_file, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a0", "a1", "a3", "a4"):
        image = rng.integers(0, 255, (36, 44)).astype(np.uint8)
        if name == "a3":     # pixels 6 times the model's: a warning, which must stay with its file
            tifffile.imwrite(folder / f"{name}.tif", image, resolution=(1 / 3, 1 / 3), imagej=True,
                             metadata={"unit": "um"})
        else:
            tifffile.imwrite(folder / f"{name}.tif", image)
    (folder / "a2.tif").write_bytes(b"II*\x00 not a TIFF")                                 # fails between them
    tifffile.imwrite(folder / "a5.tif", rng.integers(0, 255, (60, 70)).astype(np.uint8))   # large as read
    model = unet_fast.load_model(model_file)
    model.metadata = {**(getattr(model, "metadata", None) or {}), "pixel_size": {"y": 0.5, "x": 0.5}}
    monkeypatch.setattr(segment, "SMALL_FILE_PIXELS", 36 * 44)     # a5 is 4 times that read, 1.07 times at 0.5
    lines = []
    files, _ = segment.expand_inputs([str(folder)])
    summary = segment.segment_files(files, tmp_path / "out", model, scale=0.5,
                                    log=lambda line, **_: lines.append(line))
    order = [f"{line.split()[0]} {Path(line.split()[1].rstrip(':')).stem}" for line in lines]
    assert order == ["ok a0", "ok a1", "FAILED a2", "WARNING a3", "ok a3", "ok a4", "ok a5"], lines
    assert sum("for a batch of 4 files" in line for line in lines) == 4 and "for a batch" not in lines[-1]
    assert len(summary.done) == 5 and summary.pixels == 4 * 36 * 44 + 60 * 70
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    summary = segment.segment_files(files, folder, model, log=lambda *args, **kwargs: None)
    assert len(summary.done) == 0 and sum("would overwrite it" in reason for _, reason in summary.failed) == 6
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_colour_pngs_are_decoded_once_each_small_or_large(tmp_path, model_file, monkeypatch):
    """The reader threads ask a file's header whether it is small; a PNG in colour used to be decoded whole for
    that question (to tell grey from colour, which it need not know), then again to be segmented: twice per
    small file, and a large one decoded ahead of its turn, beside the one being segmented."""
    from PIL import ImageFile

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name, shape in (("small", (30, 41)), ("large", (70, 90))):
        grey = rng.integers(0, 255, shape).astype(np.uint8)
        image_io.write_image(folder / f"{name}.png", np.stack([grey] * 3 + [np.full_like(grey, 255)], -1))
    monkeypatch.setattr(segment, "SMALL_FILE_PIXELS", 40 * 50)
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.size) or load(image))
    assert cli.main(["segment", "-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--no-progress"]) == 0
    assert sorted(decoded) == [(41, 30), (90, 70)]


def test_reports_of_abandoned_zarr_reads_are_dropped_others_kept(monkeypatch):
    """A truncated tiled TIFF fails its file; the zarr reads abandoned with it report "Event loop is closed"
    at exit, each with a traceback, after segment's FAILED line: those are dropped, any other report kept."""
    import types

    monkeypatch.setattr(cli.termination, "received_in_this_process", lambda: False)   # no signal: reports count

    seen = []
    hook = cli._QuietAfterStop(seen.append)
    for error in (RuntimeError("Event loop is closed"), RuntimeError("something else"), ValueError("x")):
        hook(types.SimpleNamespace(exc_value=error))
    assert [str(report.exc_value) for report in seen] == ["something else", "x"]


def test_a_tiff_of_several_series_is_segmented_as_its_first_with_a_warning(tmp_path, model_file, capsys):
    plane = np.random.default_rng(0).integers(0, 255, (20, 30)).astype(np.uint8)
    (tmp_path / "in").mkdir()
    with tifffile.TiffWriter(tmp_path / "in" / "two.ome.tif", ome=True) as tif:
        tif.write(plane)
        tif.write(np.stack([plane, plane]))
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "two.ome.tif holds 2 image series; only the first, (20, 30), is read" in err
    assert tifffile.imread(tmp_path / "out" / "two.tif").shape == (20, 30)


def test_one_file_named_three_ways_is_segmented_once(tmp_path, model_file, monkeypatch, capsys):
    _images(tmp_path / "in", count=1)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["segment", "-i", "in/img0.tif", "in/../in/img0.tif", str(tmp_path / "in" / "img0.tif"),
                     "-o", "out", "-m", str(model_file), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "summary: 1 file(s) found, 1 segmented" in out and out.count("ok ") == 1


def test_half_precision_probabilities_are_written_to_tiff_as_float32(tmp_path, model_file):
    """fp16/bf16 give float16 probabilities, which OME-TIFF, ImageJ and Bio-Formats cannot hold (a file with a
    pixel size failed to write): TIFF results are float32, the same values."""
    (tmp_path / "in").mkdir()
    image = np.random.default_rng(3).integers(0, 255, (40, 50)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "in" / "a.ome.tif", image, metadata={"axes": "YX", "PhysicalSizeX": 0.5,
                                                                     "PhysicalSizeY": 0.5})
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--output", "probabilities", "--dtype", "bf16", "--no-progress"]) == 0
    written = tifffile.imread(tmp_path / "out" / "a.tif")
    want = predict_tiled(unet_fast.load_model(model_file), image, output="probabilities", dtype="bf16", progress=False)
    assert written.dtype == np.float32 and want.dtype == np.float16
    np.testing.assert_array_equal(np.moveaxis(written, -1, 0), want.astype(np.float32))


@pytest.mark.parametrize("output", ["labels", "instances"])
def test_an_image_whose_output_overflows_float16_fails_alone_with_the_fix(tmp_path, capsys, output):
    """--dtype fp16 with a model whose activations overflow float16 on bright images: the labels were argmax of
    inf/NaN logits, written with exit 0. Now that file fails with one line naming the cause and the fix, leaves no
    output (nor temporary file), and the others are segmented; --dtype bf16 segments all of them."""
    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2)
    with torch.no_grad():
        model.encoder[0]["conv1"].weight.mul_(3e4)
    model_file = unet_fast.save_model(model, tmp_path / "model.safetensors",
                                      normalization=unet_fast.Normalization(mode="dtype"))
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    for name, (low, high) in {"bright": (150, 255), "dark": (0, 2), "dark2": (0, 2)}.items():
        image_io.write_image(tmp_path / "in" / f"{name}.tif", rng.integers(low, high, (30, 41)).astype(np.uint8))
    status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                       "--output", output, "--dtype", "fp16", "--no-progress"])
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if "FAILED" in line]
    assert status == 1 and len(failed) == 1 and "3 file(s) found, 2 segmented, 0 skipped (exist), 1 failed" in out
    assert failed[0].startswith(f"FAILED {tmp_path / 'in' / 'bright.tif'}: NonFiniteOutputError: the network's output "
                                f"holds NaN or infinite values (in the tile of output rows 0..30, columns 0..41)")
    assert "in float16 (dtype 'fp16')" in failed[0] and "--dtype bf16" in failed[0]
    assert sorted(os.listdir(tmp_path / "out")) == ["dark.tif", "dark2.tif"]
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "bf16"), "-m", str(model_file),
                     "--output", output, "--dtype", "bf16", "--no-progress"]) == 0
    assert "3 segmented, 0 skipped (exist), 0 failed" in capsys.readouterr().out


APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "   # a resource fork's header: no image


def test_hidden_files_in_a_folder_are_skipped_but_taken_when_named(tmp_path, model_file, capsys):
    """macOS's AppleDouble ._x.tif files (copied to USB disks and shares) failed as images, and an unfinished
    output's .NAME.<hex>.partial.tif was listed when the output folder was the input folder."""
    _images(tmp_path / "in", count=2)
    (tmp_path / "in" / "._img0.tif").write_bytes(APPLE_DOUBLE)
    image_io.write_image(tmp_path / "in" / ".img1.tif.0123abcd.partial.tif", np.zeros((20, 20), np.uint8))
    for given in (tmp_path / "in", tmp_path / "in" / "*.tif"):      # glob wildcards skip them as well
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        assert cli.main(["segment", "-i", str(given), "-o", str(tmp_path / "out"), "-m", str(model_file),
                         "--no-progress"]) == 0
        assert "summary: 2 file(s) found, 2 segmented" in capsys.readouterr().out
        assert sorted(os.listdir(tmp_path / "out")) == ["img0.tif", "img1.tif"]
    assert cli.main(["segment", "-i", str(tmp_path / "in" / "._img0.tif"), "-o", str(tmp_path / "named"), "-m",
                     str(model_file), "--no-progress"]) == 1
    assert f"FAILED {tmp_path / 'in' / '._img0.tif'}" in capsys.readouterr().err
    assert segment.expand_inputs([str(tmp_path / "in"), str(tmp_path / "in" / "._img0.tif")])[0] == \
        [tmp_path / "in" / "._img0.tif", tmp_path / "in" / "img0.tif", tmp_path / "in" / "img1.tif"]


def _tree(root):
    """in/top.tif, in/p1/A01.tif, in/p1/deep/B.png, in/p2/A01.tif (as A01 of another well; of top.tif's shape,
    which follows it: the two are segmented in one batch) and a hidden folder's image: {relative path of the
    output: image}."""
    rng = np.random.default_rng(3)
    images = {}
    for name, shape in (("top.tif", (30, 41)), ("p1/A01.tif", (31, 40)), ("p1/deep/B.png", (25, 33)),
                        ("p2/A01.tif", (30, 41)), (".hidden/C.tif", (20, 20))):
        images[name] = rng.integers(0, 255, shape).astype(np.uint8)
        image_io.write_image(root / name, images[name])     # creates the folders
    del images[".hidden/C.tif"]
    return {str(Path(name).with_suffix(".tif")): image for name, image in images.items()}


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_recursive_mirrors_subfolders_into_the_output_folder(tmp_path, model_file, capsys):
    """Folders of folders (plates, wells): -r lists their images at any depth, and each output goes to the same
    subfolder of OUTDIR, so two wells' A01.tif do not collide; overlays to OUTDIR/overlays/<subfolder>."""
    images = _tree(tmp_path / "in")
    arguments = ["segment", "-i", str(tmp_path / "in"), "-m", str(model_file), "--no-progress"]
    assert cli.main([*arguments, "-o", str(tmp_path / "flat")]) == 0          # without -r: as before
    assert _files(tmp_path / "flat") == ["top.tif"]
    capsys.readouterr()
    assert cli.main([*arguments, "-o", str(tmp_path / "out"), "-r", "--overlay"]) == 0
    assert "summary: 4 file(s) found, 4 segmented" in capsys.readouterr().out
    assert _files(tmp_path / "out") == sorted([*images, *(f"overlays/{Path(n).with_suffix('.png')}" for n in images)])
    model = unet_fast.load_model(model_file)
    for name, image in images.items():
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / name),
                                      predict_tiled(model, image, progress=False))
    for part in range(2):       # job-array parts share the outputs' subfolders
        assert cli.main([*arguments, "-o", str(tmp_path / "parts"), "--recursive", "--num-parts", "2",
                         "--part-id", str(part)]) == 0
    assert _files(tmp_path / "parts") == sorted(images)
    capsys.readouterr()
    # two folders named, each mirrored from itself: their A01.tif share an output, which the first owns
    assert cli.main(["segment", "-i", str(tmp_path / "in" / "p1"), str(tmp_path / "in" / "p2"), "-o",
                     str(tmp_path / "wells"), "-m", str(model_file), "-r", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"output {tmp_path / 'wells' / 'A01.tif'} is also the output of {tmp_path / 'in' / 'p1' / 'A01.tif'}" \
           in err and "--recursive" not in err          # it is recursive: no hint to be
    # a pattern reaching into the subfolders without -r: the two A01.tif collide, and -r is suggested
    assert cli.main(["segment", "-i", str(tmp_path / "in" / "**" / "A01.tif"), "-o", str(tmp_path / "globbed"),
                     "-m", str(model_file), "--no-progress"]) == 1
    assert f"is also the output of {tmp_path / 'in' / 'p1' / 'A01.tif'}; -r/--recursive (recursive=True) writes " \
           f"each output into its input's subfolder" in capsys.readouterr().err
    # outputs into the input tree itself would replace the inputs: refused, nothing written
    before = _mtimes(tmp_path / "in")
    assert cli.main([*arguments, "-o", str(tmp_path / "in"), "-r"]) == 2
    assert "is that input itself" in capsys.readouterr().err and _mtimes(tmp_path / "in") == before


def test_recursive_continue_keeps_outputs_in_subfolders_and_never_lists_them(tmp_path, model_file, capsys):
    """--continue finds the outputs in their subfolders; an output folder inside the folder named is not
    listed (its outputs and overlays would be segmented as inputs on the next run)."""
    images = _tree(tmp_path / "in")
    arguments = ["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "in" / "seg"), "-m", str(model_file),
                 "-r", "--overlay", "--no-progress"]
    assert cli.main(arguments) == 0
    (tmp_path / "in" / "seg" / "p2" / "A01.tif").unlink()
    (tmp_path / "in" / "seg" / "overlays" / "p1" / "A01.png").unlink()
    before = _mtimes(tmp_path / "in" / "seg")
    del before[tmp_path / "in" / "seg" / "overlays" / "p2" / "A01.png"]     # redrawn with its output
    capsys.readouterr()
    assert cli.main([*arguments, "--continue"]) == 0
    out = capsys.readouterr().out
    assert "summary: 4 file(s) found, 1 segmented, 3 skipped" in out and "overlay" in out
    assert _files(tmp_path / "in" / "seg") == \
        sorted([*images, *(f"overlays/{Path(n).with_suffix('.png')}" for n in images)])
    assert all(os.stat(path).st_mtime_ns == mtime for path, mtime in before.items())


def test_recursive_says_when_the_output_folder_hides_part_of_the_input_tree(tmp_path, model_file, capsys):
    """-r -i in -o in/p2: in/p2's own image is no input (the output folder is never listed); a note says so,
    where before the count of files found was the only hint. An output folder outside the tree: no note."""
    _tree(tmp_path / "in")
    arguments = ["segment", "-i", str(tmp_path / "in"), "-m", str(model_file), "-r", "--no-progress"]
    assert cli.main([*arguments, "-o", str(tmp_path / "in" / "p2")]) == 0
    out = capsys.readouterr().out
    assert f"note: the output folder {tmp_path / 'in' / 'p2'} lies inside the input folder {tmp_path / 'in'}" in out
    assert "summary: 3 file(s) found" in out
    _tree(tmp_path / "fresh")
    assert cli.main(["segment", "-i", str(tmp_path / "fresh"), "-m", str(model_file), "-r", "--no-progress",
                     "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "note: the output folder" not in out and "summary: 4 file(s) found" in out


def test_recursive_listing_ends_symlink_loops_and_takes_ome_zarr_as_one_image(tmp_path):
    """A symlink to a folder above it (or itself) is not followed round the loop, each folder is listed once
    however many links lead to it, and an OME-Zarr folder is an image, never entered."""
    (tmp_path / "in" / "p1").mkdir(parents=True)
    image_io.write_image(tmp_path / "in" / "p1" / "a.tif", np.zeros((20, 20), np.uint8))
    (tmp_path / "in" / "p1" / "up").symlink_to(tmp_path / "in", target_is_directory=True)
    (tmp_path / "in" / "p1" / "here").symlink_to(".", target_is_directory=True)
    (tmp_path / "in" / "z" / "w1" / "img.ome.zarr").mkdir(parents=True)     # a folder ending .zarr: an image
    (tmp_path / "in" / "z" / "w1" / "img.ome.zarr" / "0").mkdir()
    image_io.write_image(tmp_path / "in" / "z" / "w1" / "img.ome.zarr" / "0" / "b.tif", np.zeros((8, 8), np.uint8))
    files, problems = segment.expand_inputs([str(tmp_path / "in")], recursive=True)
    assert files == [tmp_path / "in" / "p1" / "a.tif", tmp_path / "in" / "z" / "w1" / "img.ome.zarr"] and not problems
    assert segment.output_subfolders(files, [str(tmp_path / "in")]) == {files[0]: Path("p1"), files[1]: Path("z/w1")}
    files, problems = segment.expand_inputs([str(tmp_path / "in")])
    assert files == [] and "folder holds no image files" in problems[0][1]


def test_one_file_named_through_a_symlink_too_is_listed_once(tmp_path):
    """-i plates plates_link (a link to the same folder), or a file and a link to it: each file once, as first
    named. Before, the second name of each failed as "also the output of" the first."""
    (tmp_path / "plates").mkdir()
    image_io.write_image(tmp_path / "plates" / "a.tif", np.zeros((20, 20), np.uint8))
    (tmp_path / "plates_link").symlink_to(tmp_path / "plates", target_is_directory=True)
    (tmp_path / "b.tif").symlink_to(tmp_path / "plates" / "a.tif")
    inputs = [str(tmp_path / "plates"), str(tmp_path / "plates_link"), str(tmp_path / "b.tif")]
    assert segment.expand_inputs(inputs) == ([tmp_path / "plates" / "a.tif"], [])
    assert segment.expand_inputs(inputs[::-1]) == ([tmp_path / "b.tif"], [])


@needs_zarr
def test_recursive_segments_an_ome_zarr_in_a_tree_as_one_image(tmp_path, model_file, capsys):
    image = np.random.default_rng(6).integers(0, 255, (1, 1, 1, 37, 45)).astype(np.uint8)
    (tmp_path / "in" / "plate" / "B02").mkdir(parents=True)
    write_ome_zarr_axes(tmp_path / "in" / "plate" / "B02" / "field.ome.zarr", image)
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "-r", "--no-progress"]) == 0
    assert "summary: 1 file(s) found, 1 segmented" in capsys.readouterr().out
    assert _files(tmp_path / "out") == ["plate/B02/field.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "plate" / "B02" / "field.tif"),
                                  predict_tiled(unet_fast.load_model(model_file), image[0, 0, 0], progress=False))


def test_an_at_list_from_windows_or_a_spreadsheet_reads_as_written(tmp_path, model_file, capsys, monkeypatch):
    """A list saved by Notepad (a UTF-8 byte order mark, CRLF) or exported with trailing blanks, with # comments:
    the mark stuck to the first path, and the blanks and comments were taken as paths (three FAILED lines).
    Relative paths are relative to the current folder, as on the command line."""
    _images(tmp_path / "in", count=2)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "list.txt").write_bytes(
        b"\xef\xbb\xbfin/img0.tif\r\n# the second well\r\n  in/img1.tif \t\r\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["segment", "-i", "@lists/list.txt", "-o", "out", "-m", str(model_file), "--no-progress"]) == 0
    assert "2 file(s) found, 2 segmented, 0 skipped (exist), 0 failed" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["img0.tif", "img1.tif"]
    (tmp_path / "lists" / "empty.txt").write_text("\n# nothing yet\n  \n")
    with pytest.raises(SystemExit) as exit_:       # argparse said only "-i: expected at least one argument"
        cli.main(["segment", "-i", "@lists/empty.txt", "-o", "out2", "-m", str(model_file)])
    assert exit_.value.code == 2 and "@lists/empty.txt: the list 'lists/empty.txt' gives no argument" in \
        capsys.readouterr().err
    (tmp_path / "lists" / "lists.txt").write_text("@lists/list.txt\n")     # not read: a file may start with @
    assert cli.main(["segment", "-i", "@lists/lists.txt", "-o", "out3", "-m", str(model_file), "--no-progress"]) == 2
    assert "@lists/list.txt: no such file, folder or matching pattern; an @LIST inside a list is not read" \
           in capsys.readouterr().err


def test_an_at_list_of_inputs_takes_a_name_starting_with_a_dash_as_a_file(tmp_path, model_file, capsys, monkeypatch):
    """A listed file named -x.tif was read as an option: argparse ended -i there and failed on '-x.tif'."""
    _images(tmp_path / "in", count=2)
    os.rename(tmp_path / "in" / "img1.tif", tmp_path / "in" / "-dash.tif")
    monkeypatch.chdir(tmp_path / "in")
    (tmp_path / "list.txt").write_text("img0.tif\n-dash.tif\n")
    assert cli.main(["segment", "-i", "@../list.txt", "-o", "../out", "-m", str(model_file), "--no-progress"]) == 0
    assert "2 file(s) found, 2 segmented" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["-dash.tif", "img0.tif"]


def test_a_glob_pattern_never_lists_the_output_folders_files_without_r_either(tmp_path, model_file, capsys):
    """-i 'in/**/*.tif' -o in/seg without -r: a second run (--continue) listed the first one's outputs in in/seg as
    inputs, and refused to run ("which is that input itself"); a pattern naming the output folder still takes
    them (and is refused)."""
    images = _images(tmp_path / "in", count=2)
    (tmp_path / "in" / "p1").mkdir()
    image_io.write_image(tmp_path / "in" / "p1" / "deep.tif", images["img0"])
    command = ["segment", "-i", str(tmp_path / "in" / "**" / "*.tif"), "-o", str(tmp_path / "in" / "seg"),
               "-m", str(model_file), "--no-progress"]
    assert cli.main(command) == 0 and "3 file(s) found, 3 segmented" in capsys.readouterr().out
    assert cli.main(command + ["--continue"]) == 0
    assert "3 file(s) found, 0 segmented, 3 skipped (exist), 0 failed" in capsys.readouterr().out
    assert cli.main(command[:2] + [str(tmp_path / "in" / "seg" / "*.tif")] + command[3:]) == 2
    assert "which is that input itself" in capsys.readouterr().err


def test_recursive_mirrors_a_folder_named_inside_another_as_a_part_of_it(tmp_path, model_file, capsys):
    """-i in/p1 in -r: in/p1's images went to OUTDIR itself (the first folder named that holds them), where in's
    own images go too: in/p1/top.tif and in/top.tif shared an output, and p1 alone was not mirrored."""
    images = _tree(tmp_path / "in")
    image_io.write_image(tmp_path / "in" / "p1" / "top.tif", images["top.tif"])
    assert cli.main(["segment", "-i", str(tmp_path / "in" / "p1"), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "-m", str(model_file), "-r", "--no-progress"]) == 0
    assert "5 file(s) found, 5 segmented, 0 skipped (exist), 0 failed" in capsys.readouterr().out
    assert _files(tmp_path / "out") == sorted([*images, "p1/top.tif"])


def test_recursive_glob_patterns_mirror_from_their_folder_and_list_the_folders_they_match(tmp_path, model_file,
                                                                                           capsys):
    """-r with a pattern: 'in/**/*.tif' flattened every well into OUTDIR (two A01.tif: one FAILED), and 'in/*'
    dropped the folders it matched (only top.tif). Now the pattern's folder before its wildcards is mirrored, the
    folders it matches are listed as named ones, and an output folder inside is listed by neither."""
    images = _tree(tmp_path / "in")
    arguments = ["-m", str(model_file), "-r", "--no-progress"]
    out = tmp_path / "in" / "seg"
    assert cli.main(["segment", "-i", str(tmp_path / "in" / "**" / "*.tif"), "-o", str(out), *arguments]) == 0
    assert "3 file(s) found, 3 segmented, 0 skipped (exist), 0 failed" in capsys.readouterr().out   # B.png is none
    assert _files(out) == ["p1/A01.tif", "p2/A01.tif", "top.tif"]
    files, problems = segment.expand_inputs([str(tmp_path / "in" / "**")], recursive=True, skip=[out])
    assert len(files) == 4 and not problems and not any("seg" in path.parts for path in files)
    for pattern in ("*.tif", "**"):     # the output folder is the pattern's own: listed, as a named folder is
        files, _ = segment.expand_inputs([str(tmp_path / "in" / pattern)], recursive=True, skip=[tmp_path / "in"])
        assert tmp_path / "in" / "top.tif" in files and (pattern == "*.tif" or len(files) == 7)
    shutil.rmtree(out)
    for pattern in ("*", "**", "p*"):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        assert cli.main(["segment", "-i", str(tmp_path / "in" / pattern), "-o", str(tmp_path / "out"), *arguments,
                         "--overlay"]) == 0, pattern
        listed = sorted(images) if pattern != "p*" else ["p1/A01.tif", "p1/deep/B.tif", "p2/A01.tif"]
        assert f"{len(listed)} file(s) found, {len(listed)} segmented" in capsys.readouterr().out
        assert [name for name in _files(tmp_path / "out") if not name.startswith("overlays")] == listed


def test_a_bad_tile_size_or_part_id_is_one_line_naming_its_flag_with_the_right_advice(tmp_path, model_file, capsys):
    """--part-id 2 of 2 said "part_id must be in [0, 2)" naming no flag; an illegal --tile-size was told to
    "pad or crop the image", which is not what is wrong."""
    _images(tmp_path / "in", count=1)
    common = ["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file)]
    assert cli.main(common + ["--num-parts", "2", "--part-id", "2"]) == 2
    assert "argument --part-id: part_id must be in [0, 2), got 2" in capsys.readouterr().err
    assert cli.main(common + ["--tile-size", "141"]) == 2
    err = capsys.readouterr().err
    assert "argument --tile-size: tile size 141 is not legal" in err and "tiles need not fit the image" in err
    assert "crop the image" not in err and not (tmp_path / "out").exists()
