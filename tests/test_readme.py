"""Every Python block of README.md runs as written (in a fresh folder holding the files the blocks
name, "model.safetensors" and "slide.tif", as a user's would)."""
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import unet_fast
import ahead

README = Path(__file__).resolve().parents[1] / "README.md"
#: blocks that take more than a few seconds on 2 CPU cores, by their section: each runs in a Python of its own
#: that starts when collection ends, beside the suite (tests/ahead.py)
SLOW = {"Quickstart": "a depth-5 U-Net on a 572 x 572 tile, twice, on the CPU"}


def python_blocks(text: str) -> list[tuple[str, int, str]]:
    """(section heading, line number, code) of every ```python block."""
    blocks, section = [], ""
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.strip() == "```python":
            end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
            blocks.append((section, number + 1, "\n".join(lines[number + 1:end])))
            number = end
        number += 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_blocks():
    assert {section for section, _, _ in BLOCKS} >= {"Quickstart", "The weighted loss", "Augmentation and metrics"}


def _user_folder(folder: Path) -> None:
    """What a user's folder holds when they run the blocks: the files the blocks name."""
    torch.manual_seed(0)
    unet_fast.save_model(unet_fast.UNet(depth=2, base_channels=2), folder / "model.safetensors")
    tifffile.imwrite(folder / "slide.tif", np.random.default_rng(0).integers(0, 255, (300, 260), np.uint8),
                     tile=(64, 64))


def _where(section: str, line: int) -> str:
    return f"README.md, line {line + 1} ({section})"


RUN_BLOCK = """
import sys, torch
torch.manual_seed(0)
exec(compile(open(sys.argv[1]).read(), sys.argv[2], "exec"), {"__name__": "__readme__"})
"""


def _in_a_python_of_its_own(section: str, line: int, code: str) -> ahead.Command:
    def build(folder):
        folder = Path(folder)
        _user_folder(folder)
        (folder / "block.py").write_text(code)
        return [sys.executable, "-c", RUN_BLOCK, str(folder / "block.py"), _where(section, line)], {"cwd": folder}, None
    return ahead.Command(f"readme-line{line}", build, timeout=300)


AHEAD = {line: _in_a_python_of_its_own(section, line, code) for section, line, code in BLOCKS if section in SLOW}


@pytest.mark.parametrize("section, line, code", [
    pytest.param(*block, id=re.sub(r"\W+", "-", block[0]).strip("-").lower() + f"-line{block[1]}",
                 marks=[pytest.mark.slow, AHEAD[block[1]].mark] if block[1] in AHEAD else [])
    for block in BLOCKS])
def test_python_block_runs_as_written(section, line, code, tmp_path, monkeypatch):
    if re.search(r"^import .*\bzarr\b", code, re.M) and importlib.util.find_spec("zarr") is None:
        pytest.skip("the block imports zarr, which is not installed here (the GPU machines)")
    if line in AHEAD:
        done = AHEAD[line].result().done
        assert done.returncode == 0, f"{_where(section, line)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return
    _user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, _where(section, line), "exec"), {"__name__": "__readme__"})
