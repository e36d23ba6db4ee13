"""OME-Zarr inputs as other software writes them, for the tests."""


def write_ome_zarr_axes(path, image, names="tczyx"):
    """An OME-Zarr image of NGFF 0.4 (zarr format 2) with the given axes, as bioformats2raw writes them."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=image.shape, chunks=(1,) * (image.ndim - 2) + (16, 16), dtype=image.dtype)[...] = image
    kinds = {"t": "time", "c": "channel"}
    axes = [{"name": n, "type": kinds.get(n, "space"), **({} if n in kinds else {"unit": "micrometer"})} for n in names]
    scale = [{"z": 2.0, "y": 0.5, "x": 0.25}.get(n, 1.0) for n in names]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]


def write_bioformats2raw(path, images, listed=True):
    """bioformats2raw's layout: a root group marked "bioformats2raw.layout" (3), each image an OME-Zarr group
    0/, 1/, ... (t, c, z, y, x), and OME/ listing them as its "series" (``listed``; older versions wrote none)."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    for k, image in enumerate(images):
        write_ome_zarr_axes(f"{path}/{k}", image)
    if listed:
        zarr.open_group(f"{path}/OME", mode="w", zarr_format=2).attrs["series"] = [str(k) for k in range(len(images))]
