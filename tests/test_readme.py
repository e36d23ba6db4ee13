"""Every Python block of README.md runs as written (in a fresh folder holding the files the blocks
name, "model.safetensors" and "slide.tif", as a user's would)."""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import unet_fast

README = Path(__file__).resolve().parents[1] / "README.md"
#: blocks that take more than a few seconds on 2 CPU cores, by their section
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


@pytest.mark.parametrize("section, line, code", [
    pytest.param(*block, id=re.sub(r"\W+", "-", block[0]).strip("-").lower() + f"-line{block[1]}",
                 marks=[pytest.mark.slow] if block[0] in SLOW else [])
    for block in BLOCKS])
def test_python_block_runs_as_written(section, line, code, tmp_path, monkeypatch):
    if re.search(r"^import .*\bzarr\b", code, re.M) and importlib.util.find_spec("zarr") is None:
        pytest.skip("the block imports zarr, which is not installed here (the GPU machines)")
    torch.manual_seed(0)
    unet_fast.save_model(unet_fast.UNet(depth=2, base_channels=2), tmp_path / "model.safetensors")
    tifffile.imwrite(tmp_path / "slide.tif", np.random.default_rng(0).integers(0, 255, (300, 260), np.uint8),
                     tile=(64, 64))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md, line {line + 1} ({section})", "exec"), {"__name__": "__readme__"})
