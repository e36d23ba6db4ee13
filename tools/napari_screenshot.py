"""Draw docs/napari.png: napari with the unet_fast widget after segmenting the demo's held-out image.

    unet-fast demo                                     # writes demo_output/ (model and held-out image)
    xvfb-run -a python tools/napari_screenshot.py demo_output -o docs/napari.png

Headless: xvfb-run gives napari's canvas an X display with OpenGL (Mesa), no screen needed. Needs the
napari extra. The image is shown at 0.65 um per pixel, to show the labels taking the image's scale.
"""
import argparse
import time
from pathlib import Path

import napari
import numpy as np
import tifffile
from PIL import Image
from qtpy.QtWidgets import QApplication

PIXEL_SIZE_UM = 0.65


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_output", type=Path, help="the folder `unet-fast demo` wrote")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/napari.png"))
    args = parser.parse_args()

    viewer = napari.Viewer(show=True, title="napari + unet_fast")
    viewer.window.resize(1400, 820)
    image = tifffile.imread(args.demo_output / "heldout.tif")
    viewer.add_image(image, name="held-out nuclei", scale=(PIXEL_SIZE_UM,) * 2, units=("micrometer",) * 2)
    _, widget = viewer.window.add_plugin_dock_widget("unet_fast", "U-Net segmentation")
    widget.model_path.value = args.demo_output / "model.safetensors"
    widget.device.value = "cpu"
    widget.button.clicked()
    while widget.run is not None:             # the worker runs; the GUI keeps drawing its progress
        QApplication.processEvents()
        time.sleep(0.05)
    labels = viewer.layers["held-out nuclei instances"]
    labels.opacity = 0.45
    viewer.scale_bar.visible = True
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    screenshot = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(np.asarray(screenshot)[..., :3]).save(args.output, optimize=True)
    print(f"wrote {args.output}: {widget.status.value}")
    viewer.close()


if __name__ == "__main__":
    main()
