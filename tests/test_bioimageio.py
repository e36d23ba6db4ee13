"""bioimage.io packages: written, accepted by the official validator, run by bioimageio.core, read back.

Needs the `export` extra (bioimageio.spec, onnxscript; bioimageio.core for the runs): skipped without it.
"""
import copy
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.spec", reason="bioimage.io packages need the export extra (bioimageio.spec)")
pytest.importorskip("onnxscript", reason="bioimage.io packages hold ONNX weights: the export extra (onnxscript)")

from bioimageio.spec import load_description  # noqa: E402
from ruyaml import YAML  # noqa: E402   (YAML 1.2, as rdf.yaml; a bioimageio.spec dependency)

import unet_fast  # noqa: E402
from unet_fast import cli, geometry  # noqa: E402
from unet_fast.bioimageio_package import _normalization_from_ops, _preprocessing, export_bioimageio  # noqa: E402
from unet_fast.model_file import ModelFileError, load_model  # noqa: E402
from unet_fast.normalization import Normalization  # noqa: E402
from tolerances import assert_close  # noqa: E402

CLASSES = ["background", "nucleus", "cell border"]
NORMALIZATION = Normalization("percentile", low=2.0, high=99.0, per_channel=True, clip=True)
METADATA = {"epochs": 7, "pixel_size": {"y": 0.65, "x": 0.5, "unit": "micrometer"}}


def two_channel_image(size=150, seed=0):
    """Channels of very different brightness: per-channel percentiles matter."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.gamma(2.0, 30.0, (size, size + 7)), 1000 + rng.normal(0, 50, (size, size + 7))]).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = unet_fast.UNet(2, 3, depth=3, base_channels=4, backend="torch").eval()
    net.normalization, net.class_names, net.metadata = NORMALIZATION, CLASSES, METADATA
    return net


@pytest.fixture(scope="module")
def package(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "nuclei.zip"
    return export_bioimageio(model, path, test_image=two_channel_image(), authors=["Ann Example"],
                             description="nuclei and their borders in two-channel fluorescence")


def read_yaml(path):
    return YAML(typ="safe").load(path)


def write_yaml(data, path):
    YAML(typ="safe").dump(data, path)


@pytest.fixture(scope="module")
def rdf(package):
    with zipfile.ZipFile(package) as archive:
        return read_yaml(archive.read("rdf.yaml"))


def test_the_official_validator_accepts_the_package(package):
    summary = load_description(package, perform_io_checks=True).validation_summary
    assert summary.status == "valid-format", summary.format()     # "passed" needs bioimageio.core's runs, below
    assert not summary.errors
    # the one remark: no author gave a GitHub name (the zoo asks for a maintainer to contact)
    assert [warning.msg for warning in summary.warnings] == [
        "Missing `maintainers` or any author in `authors` with a specified `github_user` name."]


def test_sizes_are_the_networks(rdf):
    context = geometry.context(3, "valid")                                 # 20 px a side at depth 3
    space = [axis for axis in rdf["inputs"][0]["axes"] if axis["type"] == "space"]
    assert [axis["size"] for axis in space] == [{"min": 44, "step": 4}] * 2  # 44 + 4 k
    outputs = [axis for axis in rdf["outputs"][0]["axes"] if axis["type"] == "space"]
    assert [axis["size"] for axis in outputs] == [{"tensor_id": "raw", "axis_id": a, "offset": -2 * context}
                                                  for a in ("y", "x")]
    assert context == 20
    # the training pixel size, on input and output alike (a size reference needs the same unit)
    assert [(axis["unit"], axis["scale"]) for axis in space + outputs] == [("micrometer", 0.65), ("micrometer", 0.5)] * 2


def test_preprocessing_and_postprocessing(rdf):
    steps = [(step["id"], step.get("kwargs")) for step in rdf["inputs"][0]["preprocessing"]]
    assert steps[:3] == [("ensure_dtype", {"dtype": "float32"}),
                         ("scale_range", {"axes": ["y", "x"], "min_percentile": 2.0, "max_percentile": 99.0, "eps": 1e-6}),
                         ("clip", {"min": 0.0, "max": 1.0})]
    assert rdf["outputs"][0]["postprocessing"][0] == {"id": "softmax", "kwargs": {"axis": "channel"}}
    channels = [axis for axis in rdf["outputs"][0]["axes"] if axis["type"] == "channel"][0]
    assert channels["channel_names"] == ["background", "nucleus", "cell_border"]
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}


def test_test_tensors_are_the_models_answer(package, model):
    with zipfile.ZipFile(package) as archive:
        raw = np.load(archive.open("test_input.npy"))
        expected = np.load(archive.open("test_output.npy"))
    # 168 px would give the 128 px output asked for; the image (150 x 157) holds 148 = 44 + 4 * 26 at most
    assert geometry.input_size_for(128, 3, "valid") == 168
    assert raw.shape == (1, 2, 148, 148) and expected.shape == (1, 3, 108, 108)
    image = two_channel_image()
    top, left = (150 - 148) // 2, (157 - 148) // 2
    np.testing.assert_array_equal(raw[0], image[:, top:top + 148, left:left + 148])   # the centre, as it was
    x = torch.from_numpy(NORMALIZATION(raw[0], channel_axis=0))[None]
    with torch.no_grad():
        assert_close(torch.from_numpy(expected), torch.softmax(model(x), dim=1))


def test_load_model_reads_the_package_back(package, model):
    loaded = unet_fast.load_model(package)
    assert isinstance(loaded, unet_fast.UNet)
    assert loaded.config() == {**model.config(), "backend": "auto"}
    assert (loaded.normalization, loaded.class_names, loaded.metadata) == (NORMALIZATION, CLASSES, METADATA)
    x = torch.randn(2, 2, 60, 76)
    with torch.no_grad():
        assert_close(loaded(x), model(x))


def test_a_package_without_unet_fast_settings_is_read_from_its_ops(package, model, tmp_path):
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    rdf = read_yaml(tmp_path / "rdf.yaml")
    del rdf["config"]
    write_yaml(rdf, tmp_path / "rdf.yaml")
    loaded = unet_fast.load_model(tmp_path / "rdf.yaml")
    assert loaded.config()["padding"] == "valid" and loaded.config()["depth"] == 3
    assert loaded.normalization == NORMALIZATION
    assert loaded.class_names == ["background", "nucleus", "cell_border"]
    x = torch.randn(1, 2, 44, 48)
    with torch.no_grad():
        assert_close(loaded(x), model(x))


def test_a_package_of_another_network_is_refused(package, tmp_path):
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    torch.save({"layer.weight": torch.zeros(3, 3)}, tmp_path / "weights.pt")
    rdf = read_yaml(tmp_path / "rdf.yaml")
    del rdf["weights"]["pytorch_state_dict"]["sha256"], rdf["config"]
    write_yaml(rdf, tmp_path / "rdf.yaml")
    with pytest.raises(ValueError, match="not a unet_fast UNet's .*unet_fast reads packages of its own U-Net"):
        unet_fast.load_model(tmp_path / "rdf.yaml")


class Hostile:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("weights, config, error, message", [
    (lambda: b"PK\x03\x04 truncated", None, ModelFileError, r"rdf.yaml \(weights.pt\): not a readable PyTorch file"),
    (lambda: pickle.dumps(Hostile()), None, pickle.UnpicklingError,
     r"rdf.yaml \(weights.pt\): refused: it holds objects other than tensors"),
    (None, lambda saved: saved.pop("normalization"), ModelFileError,
     r"rdf.yaml: its config.unet_fast is no unet_fast model config \(no 'normalization'\)"),
    (None, lambda saved: saved.update(architecture="UNet"), ModelFileError,
     "rdf.yaml: its config.unet_fast is no unet_fast model config"),
])
def test_a_package_is_untrusted_input(package, tmp_path, weights, config, error, message):
    """Its weights are read weights_only, with unet_fast's errors (torch's advice for a pickle is to load it with
    weights_only=False), and its config.unet_fast is checked: both used to raise torch's RuntimeError or a bare
    KeyError/TypeError, with no path, which the CLI did not blame on -m."""
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    rdf = read_yaml(tmp_path / "rdf.yaml")
    if weights is not None:
        (tmp_path / "weights.pt").write_bytes(weights())
        del rdf["weights"]["pytorch_state_dict"]["sha256"]
    if config is not None:
        config(rdf["config"]["unet_fast"])
    write_yaml(rdf, tmp_path / "rdf.yaml")
    with pytest.raises(error, match=message):
        unet_fast.load_model(tmp_path / "rdf.yaml")


@pytest.mark.parametrize("normalization, dtype, steps", [
    (Normalization("percentile", 1.0, 99.8, per_channel=False), np.float32,
     [("scale_range", {"axes": ["channel", "y", "x"], "min_percentile": 1.0, "max_percentile": 99.8, "eps": 1e-6})]),
    (Normalization("fixed", low=100.0, high=4195.0, clip=True), np.float32,
     [("scale_linear", {"gain": 1 / 4095, "offset": -100 / 4095}), ("clip", {"min": 0.0, "max": 1.0})]),
    (Normalization("dtype"), np.uint16, [("scale_linear", {"gain": 1 / 65535, "offset": 0.0})]),
    (Normalization("dtype"), np.float32, []),
    (Normalization("fixed", low=0.0, high=1.0), np.float32, []),         # the identity: no op at all
    (Normalization("none", clip=True), np.float32, []),                 # "none" is never clipped
])
def test_each_normalization_becomes_ops(normalization, dtype, steps):
    ops = _preprocessing(normalization, np.dtype(dtype))
    assert ops[0] == ops[-1] == {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    assert [(op["id"], op["kwargs"]) for op in ops[1:-1]] == steps


@pytest.mark.parametrize("normalization", [Normalization("dtype"), Normalization("dtype", clip=True),
                                           Normalization("fixed", low=100.0, high=4195.0)])
def test_integer_inputs_reach_the_network_as_scaled_floats(normalization):
    """Preprocessing that did not end in ensure_dtype got one from the spec, casting back to the input's type:
    uint16 pixels scaled to [0, 1] became uint16 again, and `bioimageio test` failed on unet_fast's own package."""
    from bioimageio.spec.model.v0_5 import InputTensorDescr

    descr = InputTensorDescr.model_validate({
        "id": "raw", "axes": [{"type": "channel", "channel_names": ["c0"]}, {"type": "space", "id": "y", "size": 8},
                              {"type": "space", "id": "x", "size": 8}],
        "data": {"type": "uint16"}, "preprocessing": _preprocessing(normalization, np.dtype(np.uint16))})
    assert [step.id for step in descr.preprocessing][-1] == "ensure_dtype"
    assert descr.preprocessing[-1].kwargs.dtype == "float32"


def test_ops_give_the_normalization_back():
    from bioimageio.spec.model.v0_5 import InputTensorDescr

    for normalization in (NORMALIZATION, Normalization("percentile", 0.5, 99.5, per_channel=False),
                          Normalization("fixed", low=100.0, high=4195.0, clip=True)):
        descr = InputTensorDescr.model_validate({
            "id": "raw", "axes": [{"type": "channel", "channel_names": ["c0"]}, {"type": "space", "id": "y", "size": 8},
                                  {"type": "space", "id": "x", "size": 8}],
            "preprocessing": _preprocessing(normalization, np.dtype(np.float32))})
        restored = _normalization_from_ops(descr.preprocessing, "package")
        assert restored.to_dict() == pytest.approx(normalization.to_dict())


def test_export_needs_an_image_of_the_models_channels(model, tmp_path):
    with pytest.raises(ValueError, match="test_image is needed: the model takes 2 channels"):
        export_bioimageio(model, tmp_path / "a.zip")
    with pytest.raises(ValueError, match=r"test_image must be \(H, W\) or \(C, H, W\) with C = 2"):
        export_bioimageio(model, tmp_path / "a.zip", test_image=np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="too small: the model needs at least 44 pixels a side"):
        export_bioimageio(model, tmp_path / "a.zip", test_image=np.zeros((2, 40, 64)))
    assert list(tmp_path.iterdir()) == []


def test_export_never_overwrites(model, package):
    before = package.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        export_bioimageio(model, package, test_image=two_channel_image())
    assert package.read_bytes() == before


def test_a_model_over_the_onnx_limit_is_refused_before_its_torchscript_weights(model, tmp_path, monkeypatch):
    """The package holds ONNX weights, at most 2 GiB (``export.PROTOBUF_LIMIT``, here just below or at this model's
    weights): over it, the package was refused at its ONNX step, after its test tensors and TorchScript weights
    (minutes for a model of GiBs); now before any of them. At the limit it goes on to them."""
    import os

    from unet_fast import bioimageio_package, export
    from unet_fast.checks import BadArgument

    class Reached(Exception):
        pass

    def torchscript(model, path):
        raise Reached(path)

    weights = 4 * sum(parameter.numel() for parameter in model.parameters())
    monkeypatch.setattr(bioimageio_package, "export_torchscript", torchscript)
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", weights - 1)
    with pytest.raises(BadArgument, match=f"the model's weights are 0.00 GiB in float32 \\({weights:,} bytes\\), over "
                                          f"the 2 GiB a single ONNX file .* export it as torchscript instead"):
        export_bioimageio(model, tmp_path / "a.zip", test_image=two_channel_image())
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", weights)
    with pytest.raises(Reached):
        export_bioimageio(model, tmp_path / "a.zip", test_image=two_channel_image())
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_bioimageio_core_reproduces_the_test_output_with_every_weights_format(package):
    core = pytest.importorskip("bioimageio.core", reason="running packages needs bioimageio.core")
    summary = core.test_model(package)
    assert summary.status == "passed", summary.format()
    ran = {detail.name for detail in summary.details}
    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        assert f"Reproduce test outputs from test inputs ({weights})" in ran
        assert f"Run {weights} inference for inputs with batch_size: 2 and size parameter n: 2" in ran


@pytest.mark.slow
def test_a_model_from_unet_fast_train_exports_a_valid_package(tmp_path, capsys):
    import tifffile

    images, labels = unet_fast.synthetic_nuclei(3, 48, seed=0)
    for folder in ("im", "lb"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "im" / f"n{i}.tif", (images[i] * 255).astype(np.uint8))
        tifffile.imwrite(tmp_path / "lb" / f"n{i}.tif", labels[i].astype(np.uint16))
    assert cli.main(["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"), "--depth", "2",
                     "--base-channels", "4", "--tile-size", "44", "--tiles-per-epoch", "2", "--epochs", "1",
                     "--no-progress", "-o", str(tmp_path / "model.safetensors")]) == 0
    assert cli.main(["export", str(tmp_path / "model.safetensors"), "--format", "bioimageio", "-o",
                     str(tmp_path / "model.zip"), "--test-image", str(tmp_path / "im" / "n0.tif"),
                     "--author", "Ann Example", "--name", "synthetic nuclei"]) == 0
    assert "wrote" in capsys.readouterr().out
    summary = load_description(tmp_path / "model.zip", perform_io_checks=True).validation_summary
    assert summary.status == "valid-format", summary.format()
    core = pytest.importorskip("bioimageio.core", reason="running packages needs bioimageio.core")
    tested = core.test_model(tmp_path / "model.zip")
    assert tested.status == "passed", tested.format()


def test_weights_larger_than_the_declared_network_are_refused_unread(package, tmp_path):
    """A zip bomb: 64 MiB of zeros deflate to 64 KiB. They used to be read whole into memory (twice) before torch
    refused them; a package of 2 MB took 4.4 GB and 24 s to refuse."""
    with zipfile.ZipFile(package) as archive:
        rdf = read_yaml(archive.read("rdf.yaml"))
        del rdf["weights"]["pytorch_state_dict"]["sha256"]
        with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bomb:
            for name in archive.namelist():
                if name == "weights.pt":
                    with bomb.open(name, "w") as weights:
                        for _ in range(64):
                            weights.write(bytes(1 << 20))
                elif name == "rdf.yaml":
                    with bomb.open(name, "w") as text:
                        YAML(typ="safe").dump(rdf, text)
                else:
                    bomb.writestr(name, archive.read(name))
    assert (tmp_path / "bomb.zip").stat().st_size < (1 << 20)
    with pytest.raises(ModelFileError, match=r"bomb.zip: its weights \(weights.pt\) hold more than [\d,]+ bytes"):
        unet_fast.load_model(tmp_path / "bomb.zip")


@pytest.mark.parametrize("source", ["OUTSIDE", "../outside/weights.pt", "https://example.invalid/weights.pt"])
def test_a_package_reads_no_weights_from_outside_itself(package, tmp_path, source):
    """Its rdf.yaml named weights by an absolute path, a path up out of its folder or a URL, and load_model read
    (or downloaded) them: opening a package reached files it does not hold."""
    (tmp_path / "package").mkdir()
    (tmp_path / "outside").mkdir()
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path / "package")
    (tmp_path / "package" / "weights.pt").rename(tmp_path / "outside" / "weights.pt")
    rdf = read_yaml(tmp_path / "package" / "rdf.yaml")
    rdf["weights"]["pytorch_state_dict"]["source"] = str(tmp_path / "outside" / "weights.pt") if source == "OUTSIDE" \
        else source
    del rdf["weights"]["pytorch_state_dict"]["sha256"]
    write_yaml(rdf, tmp_path / "package" / "rdf.yaml")
    with pytest.raises(ModelFileError, match=r"rdf.yaml: its weights .* are not a file inside the package"):
        unet_fast.load_model(tmp_path / "package" / "rdf.yaml")


def test_a_test_image_whose_percentiles_coincide_is_refused(tmp_path):
    """Normalization takes the range of such an image (its percentiles coincide), the package's scale_range divides
    by 1e-6: the written test output was not what bioimageio.core computes, and `bioimageio test` failed."""
    torch.manual_seed(0)
    net = unet_fast.UNet(1, 2, depth=2, base_channels=2, backend="torch").eval()
    flat = np.full((150, 150), 10.0, np.float32)
    flat[::37, ::41] = 1000.0                  # 25 bright pixels of 22,500: both percentiles are 10
    with pytest.raises(ValueError, match="test_image.*equal 1.0 and 99.8 percentiles"):
        export_bioimageio(net, tmp_path / "flat.zip", test_image=flat)
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_zeroes_nonfinite_pixels_exports_with_a_warning_and_says_so(model, tmp_path):
    """bioimage.io preprocessing has no op for "NaN and inf become 0": other tools would hand them to the
    network. Export warns, and the package's README tells its users; unet_fast reads the rule back."""
    from dataclasses import replace

    zeroing = copy.deepcopy(model)
    zeroing.normalization = replace(model.normalization, nonfinite="zero")
    with pytest.warns(UserWarning, match="nonfinite='zero'.*cannot express"):
        path = export_bioimageio(zeroing, tmp_path / "zero.zip", test_image=two_channel_image())
    with zipfile.ZipFile(path) as archive:
        readme = archive.read("README.md").decode()
    assert "NaN and infinite pixels: unet_fast sets them to 0" in readme
    assert load_model(path).normalization.nonfinite == "zero"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_bioimageio(model, tmp_path / "plain.zip", test_image=two_channel_image())
    assert not [w for w in caught if "nonfinite" in str(w.message)]


def test_a_model_that_resamples_declares_the_pixel_size_its_network_sees(model):
    """Exported with ignore_scale, a model trained at 0.65 x 0.5 um that resamples its images by 0.5 (pixels twice
    as large) declared 0.65 x 0.5 um, and its README said to segment images of that pixel size: the tools and
    people that follow it fed the network objects at half the size it learnt. The network sees 1.3 x 1 um."""
    from bioimageio import spec
    from unet_fast.bioimageio_package import _description, _documentation

    scaled = copy.deepcopy(model)
    scaled.input_scale = 0.5
    raw = two_channel_image()[:, :44, :44]
    rdf = _description(spec, scaled, "scaled", None, ["Ann Example"], "CC-BY-4.0", [], NORMALIZATION, CLASSES, raw)
    space = [axis for tensor in (*rdf["inputs"], *rdf["outputs"]) for axis in tensor["axes"] if axis["type"] == "space"]
    assert [(axis["unit"], axis["scale"]) for axis in space] == [("micrometer", 1.3), ("micrometer", 1.0)] * 2
    assert rdf["config"]["unet_fast"]["input_scale"] == 0.5
    readme = _documentation(scaled, "scaled", NORMALIZATION, CLASSES, raw, raw)
    assert "pixels of 1.3 x 1 micrometer (y x); segment images of about that pixel size" in readme
    assert "resample your images by 0.5 first, to the pixel size above" in readme
    plain = _description(spec, model, "plain", None, ["Ann Example"], "CC-BY-4.0", [], NORMALIZATION, CLASSES, raw)
    assert plain["config"]["unet_fast"]["input_scale"] == 1.0
    assert "resample" not in _documentation(model, "plain", NORMALIZATION, CLASSES, raw, raw)


@pytest.mark.parametrize("input_scale, loaded", [(0.5, 0.5), (None, 1.0), (1e9, "input_scale must be a number")])
def test_load_model_gives_a_package_its_input_scale_back(package, tmp_path, input_scale, loaded):
    """load_model of a package exported with ignore_scale gave a model that no longer resampled its images: `unet-fast
    segment -m THE.zip` segmented at the wrong scale without a word. A package without one (older, or another
    tool's config) resamples nothing; one of a scale unet_fast refuses is refused."""
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    rdf = read_yaml(tmp_path / "rdf.yaml")
    rdf["config"]["unet_fast"].pop("input_scale", None)
    if input_scale is not None:
        rdf["config"]["unet_fast"]["input_scale"] = input_scale
    write_yaml(rdf, tmp_path / "rdf.yaml")
    if isinstance(loaded, str):
        with pytest.raises(ModelFileError, match=loaded):
            load_model(tmp_path / "rdf.yaml")
    else:
        assert load_model(tmp_path / "rdf.yaml").input_scale == loaded


@pytest.mark.parametrize("output, name", [
    ("nuclei.v2.zip", "unet_fast U-Net nuclei_v2"),
    ("modèle #2.zip", "unet_fast U-Net mod_le _2"),
    ("x" * 100 + ".zip", "unet_fast U-Net " + "x" * 48),
])
def test_the_default_name_is_one_the_spec_takes(model, output, name):
    """The name made from the output file's ("unet_fast U-Net nuclei.v2") was refused by the validator for its ".",
    after the package's work (12 s), as "the bioimage.io validator rejected the package: (and 13 more lines: --debug
    shows them)": `unet-fast export m.safetensors --format bioimageio -o nuclei.v2.zip` could not be done."""
    from bioimageio import spec
    from unet_fast.bioimageio_package import _description, default_name

    assert default_name(output) == name
    raw = two_channel_image()[:, :44, :44]
    rdf = _description(spec, model, name, None, ["Ann Example"], "CC-BY-4.0", [], NORMALIZATION, CLASSES, raw)
    with spec.ValidationContext(perform_io_checks=False):      # the files it names are not written: the fields only
        errors = spec.build_description(rdf).validation_summary.errors
    assert not [error for error in errors if error.loc[0] == "name"]


@pytest.mark.parametrize("options, flag, message", [
    ({"license": "NOT-A-LICENSE"}, "--license", "a license must be an SPDX identifier bioimage.io knows, e.g. "
                                                "CC-BY-4.0, MIT, BSD-3-Clause, Apache-2.0; got 'NOT-A-LICENSE'"),
    ({"name": "tiny"}, "--name", "a model's name must be 5 to 128 characters, letters, digits, spaces and _+-() "
                                 "(bioimage.io's rule), got 'tiny'"),
    ({"name": "nuclei/v2"}, "--name", "got 'nuclei/v2'"),
    ({"name": "n" * 129}, "--name", "5 to 128 characters"),
])
def test_what_the_validator_refuses_of_the_callers_is_refused_before_any_work(model, tmp_path, monkeypatch, capsys,
                                                                              options, flag, message):
    """A license or name the spec refuses was found by the package's validation, after the work (22 s for the
    real nuclei model), and said as the first line of its table, which said nothing: "the bioimage.io validator
    rejected the package: (and 17 more lines: --debug shows them)", exit 1."""
    import unet_fast.bioimageio_package as package

    def no_work(*args, **kwargs):
        raise AssertionError("the package's work began")

    monkeypatch.setattr(package, "_probabilities", no_work)
    with pytest.raises(ValueError, match=f"^{list(options)[0]}: ") as refused:
        export_bioimageio(model, tmp_path / "m.zip", test_image=two_channel_image(), **options)
    assert message in str(refused.value)
    model_file = unet_fast.save_model(model, tmp_path / "model.safetensors")
    arguments = [f"--{key}={value}" for key, value in options.items()]
    assert cli.main(["export", str(model_file), "--format", "bioimageio", "-o", str(tmp_path / "m.zip"),
                     "--test-image", str(_two_channel_tiff(tmp_path)), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unet-fast export: error: argument {flag}: ") and message in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m.zip").exists()


def _two_channel_tiff(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "test.tif", two_channel_image(), imagej=True, metadata={"axes": "CYX"})
    return tmp_path / "test.tif"


def test_a_package_the_validator_refuses_is_said_in_one_line():
    """The validator's refusal came as its table (a line per cell, hundreds of columns wide), of which the command
    line showed the first line: "the bioimage.io validator rejected the package:" and nothing of why."""
    from bioimageio import spec
    from unet_fast.bioimageio_package import _errors

    with spec.ValidationContext(perform_io_checks=False):
        summary = spec.build_description({"format_version": "0.5.4", "type": "model", "name": "x"}).validation_summary
    text = _errors(summary)
    assert "\n" not in text and "|" not in text and "function-after" not in text
    assert text.startswith("name: Value should have at least 5 items after validation, not 1; ")
