"""napari plugin (npe2 manifest: napari.yaml): a segmentation widget and an OME-Zarr reader.

segmentation.py and reader.py need neither napari nor Qt (they are tested without them); _widget.py
is the Qt dock widget, imported by napari only when the widget is opened (`pip install --no-build-isolation -e ".[napari]"` in the checkout).
"""
