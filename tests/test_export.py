"""unet_fast.export: the standalone U-Net, TorchScript, ONNX, and `unet-fast export`'s errors.

bioimage.io packages are tested in test_bioimageio.py. ONNX needs the `export` extra (onnxscript,
onnxruntime) and is skipped without it; everything else runs on the core install.
"""
import contextlib
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import tifffile
import torch

import unet_fast
from unet_fast import cli, geometry, reference, standalone_unet
from unet_fast.export import check_output, export_onnx, export_torchscript, new_file
from unet_fast.inference import predict_tiled
from unet_fast.standalone_unet import UNet as StandaloneUNet
import ahead
from tolerances import assert_close


def net(padding="valid", in_channels=1, num_classes=3, depth=3, seed=0):
    torch.manual_seed(seed)
    model = unet_fast.UNet(in_channels, num_classes, depth=depth, base_channels=4, padding=padding, backend="torch")
    for parameter in model.parameters():       # biases away from zero, so a dropped bias would show
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


def legal_sizes(model, count):
    """``count`` legal sizes of differing k, none of them the size the exporters trace with."""
    start, step = geometry.min_input_size(model.depth, model.padding), geometry.size_step(model.depth)
    return [start + step * k for k in (0, 1, 3, 5)][:count]


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_standalone_unet_computes_the_reference(padding):
    model = net(padding)
    oracle = reference.UNet(1, 3, depth=3, base_channels=4, padding=padding).eval()
    oracle.load_state_dict(model.state_dict())
    standalone = StandaloneUNet(1, 3, depth=3, base_channels=4, padding=padding).eval()
    standalone.load_state_dict(model.state_dict())          # the same names: strict loading succeeds
    height, width = legal_sizes(model, 2)
    x = torch.randn(2, 1, height, width)
    with torch.no_grad():
        assert_close(standalone(x), oracle(x))


def test_standalone_unet_imports_nothing_but_torch():
    """Packages ship the file alone: an import of unet_fast in it would fail where unet_fast is absent."""
    source = open(unet_fast.standalone_unet.__file__).read()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"__future__", "torch", "torch.nn.functional"}


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_torchscript_runs_any_batch_and_legal_size(tmp_path, padding):
    model = net(padding)
    path = export_torchscript(model, tmp_path / "model.pt")
    scripted = torch.jit.load(str(path))
    for batch, (height, width) in ((3, legal_sizes(model, 2)), (1, legal_sizes(model, 4)[2:])):
        x = torch.randn(batch, 1, height, width)
        with torch.no_grad():
            assert_close(scripted(x), model(x))


def test_onnx_runs_in_onnxruntime_like_the_model(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnxscript)")
    ort = pytest.importorskip("onnxruntime", reason="running ONNX needs the export extra (onnxruntime)")
    # torch's own save moves the weights of a model over 1.5 GiB (depth 7, base 64) to an external data file,
    # named after the temporary file, which export used to leave beside the output: the threshold lowered to 0
    # here, as if this model were that large, one file must still come out
    with contextlib.suppress(ImportError, AttributeError):
        from torch.onnx._internal.exporter import _onnx_program
        monkeypatch.setattr(_onnx_program, "_LARGE_MODEL_THRESHOLD", 0)
    model = net(in_channels=2)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]        # one file: no external data, no leftovers
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["input"]
    for batch, (height, width) in ((2, legal_sizes(model, 2)), (3, legal_sizes(model, 4)[2:])):
        x = torch.randn(batch, 2, height, width)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            assert_close(torch.from_numpy(logits), model(x))


def described(model):
    model.normalization = unet_fast.Normalization("percentile", low=2.0, high=99.0)
    model.class_names = ["background", "nucleus", "border"]
    return model


def check_description(text, model):
    import json

    found = json.loads(text)
    assert found["architecture"] == model.config()
    assert found["input"]["legal_sizes"] == {"min": geometry.min_input_size(model.depth, model.padding),
                                             "step": geometry.size_step(model.depth)}
    assert unet_fast.Normalization.from_dict(found["input"]["normalization"]) == model.normalization
    assert found["output"]["class_names"] == ["background", "nucleus", "border"]
    assert found["output"]["pixels_lost_per_side"] == geometry.context(model.depth, model.padding)


@pytest.mark.parametrize("height, width", [(37, 53), (5, 90)])
def test_an_image_of_any_size_mirrored_as_the_package_says_gives_predict_tileds_answer(tmp_path, height, width):
    """The package's README: mirror by the context at the top and left, and at the bottom and right by the context
    plus what makes a legal size, in one step; the first H x W outputs are unet_fast's (its tiles mirror alike)."""
    model = net(in_channels=2)
    image = np.random.default_rng(0).random((2, height, width)).astype(np.float32)
    expected = predict_tiled(model, image, output="logits", layout="CYX", progress=False,
                             normalization=unet_fast.Normalization("none"))
    context = geometry.context(model.depth, model.padding)
    legal = [geometry.nearest_valid_input_sizes(n + 2 * context, model.depth, model.padding)[1]
             for n in (height, width)]
    mirrored = np.pad(image, ((0, 0), (context, legal[0] - height - context), (context, legal[1] - width - context)),
                      mode="reflect")
    scripted = torch.jit.load(str(export_torchscript(model, tmp_path / "m.pt")))
    with torch.no_grad():
        logits = scripted(torch.from_numpy(mirrored)[None])[0]
    assert_close(logits[:, :height, :width], torch.from_numpy(expected))


def test_torchscript_says_what_its_inputs_need(tmp_path):
    """A bare TorchScript file cannot say how to normalise its input, which sizes are legal or what its
    channels are: it holds unet_fast's description as an extra file."""
    model = described(net())
    extra = {"unet_fast.json": ""}
    torch.jit.load(str(export_torchscript(model, tmp_path / "model.pt")), _extra_files=extra)
    check_description(extra["unet_fast.json"], model)


def test_onnx_says_what_its_inputs_need(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extra")
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnxscript)")
    model = described(net())
    props = {p.key: p.value for p in onnx.load(str(export_onnx(model, tmp_path / "model.onnx"))).metadata_props}
    check_description(props["unet_fast"], model)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_onnx_names_no_path_of_the_machine_that_exported_it(tmp_path):
    """Every node carried torch's stack trace, with the exporting machine's absolute paths (its checkout, its
    virtual environment): 68 of them in a depth-2 model, in a file made to be shared."""
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extra")
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnxscript)")
    written = export_onnx(net(), tmp_path / "model.onnx").read_bytes()
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(unet_fast.__file__))).encode()
    assert checkout not in written and b"site-packages" not in written and b"stack_trace" not in written
    assert not any(node.metadata_props for node in onnx.load_from_string(written).graph.node)


def ir_model(ir):
    """A small ONNX IR model holding initializers of each kind ``_write_onnx`` meets: torch tensors (the
    exporter's weights), numpy ones (its constants) and one kept as a TensorProto."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx_ir.tensor_adapters import TorchTensor

    weights = torch.randn(3, 5)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["z"]),
         helper.make_node("Mul", ["z", "scale"], ["out"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [15])],
        [numpy_helper.from_array(np.zeros((3, 5), np.float32), "w"), numpy_helper.from_array(np.array([15]), "shape"),
         helper.make_tensor("scale", TensorProto.FLOAT, [], [2.0])])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    model.graph.initializers["w"].const_value = TorchTensor(weights.requires_grad_())
    model.graph.initializers["shape"].const_value = ir.Tensor(np.array([15], np.int64))
    model.metadata_props["unet_fast"] = "{}"
    return model, weights.detach()


def test_write_onnx_writes_the_model_onnx_ir_would(tmp_path):
    """_write_onnx streams each weight into the file after the rest of the model: it must parse as the ModelProto
    onnx_ir serialises, run, and leave the model as it was."""
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the export extra")
    ir = pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnxscript)").ir
    ort = pytest.importorskip("onnxruntime", reason="running ONNX needs the export extra (onnxruntime)")
    pytest.importorskip("onnx_ir.tensor_adapters")
    model, weights = ir_model(ir)
    expected = ir.serde.serialize_model(model)
    unet_fast.export._write_onnx(model, tmp_path / "model.onnx")
    assert onnx.load(str(tmp_path / "model.onnx")) == expected
    assert ir.serde.serialize_model(model) == expected
    x = np.random.default_rng(0).standard_normal((3, 5), dtype=np.float32)
    (out,) = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"x": x})
    np.testing.assert_array_equal(out, 2 * (x + weights.numpy()).reshape(15))


def test_write_onnx_refuses_a_file_protobuf_cannot_read(tmp_path, monkeypatch):
    """Over 2 GiB (depth 8, base 64) no parser reads the file: refused, before a byte is written."""
    ir = pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnxscript)").ir
    pytest.importorskip("onnx_ir.tensor_adapters")
    monkeypatch.setattr(unet_fast.export, "PROTOBUF_LIMIT", 100)
    with pytest.raises(ValueError, match="over the 2 GiB a single ONNX file .* can hold: export this model as "
                                         "torchscript instead"):
        with new_file(tmp_path / "model.onnx") as temporary:
            unet_fast.export._write_onnx(ir_model(ir)[0], temporary)
    assert os.listdir(tmp_path) == []


def _over_the_onnx_limit():
    """A U-Net of 629,536,610 parameters (depth 6, base 144; the count by the paper's formula, 31,030,658 at depth 5,
    base 64): 2.35 GiB of float32 weights, on the meta device (their shapes, no memory)."""
    with torch.device("meta"):
        return unet_fast.UNet(1, 2, depth=6, base_channels=144, backend="torch")


def test_onnx_weight_bytes_are_the_float32_weights_whatever_the_model_holds():
    from unet_fast.export import onnx_weight_bytes

    assert onnx_weight_bytes(net()) == 4 * 7407                  # depth 3, base 4, 1 channel in, 3 classes out
    assert onnx_weight_bytes(net().to(torch.bfloat16)) == 4 * 7407   # the standalone U-Net holds float32
    assert onnx_weight_bytes(_over_the_onnx_limit()) == 4 * 629_536_610


@pytest.mark.parametrize("format, suffix, fix", [
    ("onnx", ".onnx", "export this model as torchscript instead"),
    ("bioimageio", ".zip", "a bioimage.io package holds the weights as ONNX too, so it cannot hold this model; "
                           "export it as torchscript instead (unet-fast export --format torchscript)"),
])
def test_a_model_over_the_onnx_limit_is_refused_before_any_work(tmp_path, monkeypatch, capsys, model_file, format,
                                                                 suffix, fix):
    """An ONNX file (one protobuf message) holds at most 2 GiB, and a bioimage.io package holds ONNX weights: a
    model of more is refused up front, naming the model, its size and what to do instead, with nothing written (the
    package was refused at its ONNX step, after its test tensors and TorchScript weights). In Python and on the
    command line (a usage error of the model: exit 2, one line)."""
    from unet_fast.checks import BadArgument
    from unet_fast.export import export

    model = _over_the_onnx_limit()
    message = ("the model's weights are 2.35 GiB in float32 (2,518,146,440 bytes), over the 2 GiB a single ONNX file "
               "(a protobuf message) can hold: " + fix)
    with pytest.raises(BadArgument) as raised:
        export(model, tmp_path / f"m{suffix}", format)
    assert raised.value.argument == "model" and message in str(raised.value)
    monkeypatch.setattr(unet_fast, "load_model", lambda path: model)
    assert cli.main(["export", str(model_file), "--format", format, "-o", str(tmp_path / f"m{suffix}")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unet-fast export: error: argument model: ") and message in err
    assert len(err.strip().splitlines()) == 1 and os.listdir(tmp_path) == ["model.safetensors"]


def _export_a_deep_model(folder):
    script = """if True:
        import json, resource, sys
        import unet_fast
        from unet_fast.export import export_onnx

        model = unet_fast.UNet(1, 2, depth=6, base_channels=64, backend="torch").eval()
        unit = 1 if sys.platform == "darwin" else 1024              # ru_maxrss: bytes on macOS, KiB on Linux
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        export_onnx(model, sys.argv[1])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        print(json.dumps({"weights": weights, "before": before, "after": after}))
    """
    return [sys.executable, "-c", script, os.path.join(folder, "deep.onnx")], {}, folder


DEEP_EXPORT = ahead.Command("deep-onnx-export", _export_a_deep_model, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="measures peak memory with the resource module")
@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None,
                    reason="ONNX export needs the export extra (onnxscript)")
@DEEP_EXPORT.mark
def test_onnx_export_of_a_deep_model_needs_less_memory_than_another_copy_of_its_weights():
    """Depth 6, base 64: 474 MiB of weights. Exporting it used to add 2 GiB to the process's peak (a standalone
    copy of the weights, torch's ModelProto and its serialisation, then a load and a second save); the exporter
    traces with fake tensors, so what remains is ~0.2 GiB, whatever the weights and the example input."""
    run = DEEP_EXPORT.result()
    assert run.done.returncode == 0, run.done.stdout[-2000:] + run.done.stderr[-4000:]
    found = json.loads(run.done.stdout.strip().splitlines()[-1])
    assert found["weights"] > 450 * 2 ** 20
    assert found["after"] - found["before"] < found["weights"], found
    assert os.listdir(run.folder) == ["deep.onnx"]
    # the weights are in the one file (the exporter drops the all-zero biases of a fresh net: 20 KiB here)
    assert os.path.getsize(os.path.join(run.folder, "deep.onnx")) > 0.99 * found["weights"]


def test_standalone_unet_knows_the_legal_sizes():
    """The standalone file cannot import unet_fast.geometry: its own arithmetic must agree with it."""
    for padding in ("valid", "same"):
        for depth in range(1, geometry.MAX_DEPTH + 1):
            assert (standalone_unet.smallest_input(depth, padding)
                    == geometry.min_input_size(depth, padding)), (depth, padding)


def illegal_and_legal_sizes(model):
    return [(n, geometry.is_valid_input_size(n, model.depth, model.padding)) for n in range(1, 62)]


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_standalone_and_torchscript_refuse_illegal_sizes(tmp_path, padding):
    """An illegal size used to run: each 2x2 max-pool of an odd size floored, the copy and crop took a window half
    a pixel off centre, and the result was plausible and wrong (45 px at depth 3 gave 4 px, as 44 does)."""
    model = net(padding)
    standalone = StandaloneUNet(1, 3, depth=3, base_channels=4, padding=padding).eval()
    standalone.load_state_dict(model.state_dict())
    scripted = torch.jit.load(str(export_torchscript(model, tmp_path / "model.pt")))
    legal = geometry.min_input_size(3, padding)
    for n, is_legal in illegal_and_legal_sizes(model):
        for network in (standalone, scripted):
            x = torch.zeros(1, 1, legal, n)
            if is_legal:
                network(x)
            else:
                with pytest.raises((ValueError, torch.jit.Error), match=f"input width is {n} pixels, not a legal "
                                   f"size for this U-Net: the legal sizes are {legal} \\+ 4 k"):
                    network(x)
    with pytest.raises(ValueError, match=r"nearest: 44 or 48\)"):
        StandaloneUNet(1, 3, depth=3, base_channels=4)(torch.zeros(1, 1, 45, 44))
    with pytest.raises(ValueError, match="4 dimensions"):
        standalone(torch.zeros(1, legal, legal))


def test_onnx_refuses_illegal_sizes(tmp_path):
    """onnxruntime ran some illegal sizes (an odd size max-pooled, floored): a plausible, wrong result."""
    pytest.importorskip("onnxscript", reason="ONNX export needs the export extra (onnxscript)")
    ort = pytest.importorskip("onnxruntime", reason="running ONNX needs the export extra (onnxruntime)")
    model = net(in_channels=3)
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "model.onnx")))
    legal = geometry.min_input_size(model.depth)
    for n, is_legal in illegal_and_legal_sizes(model):
        x = torch.randn(2, 3, n, legal)
        if is_legal:
            (logits,) = session.run(None, {"input": x.numpy()})
            with torch.no_grad():
                assert_close(torch.from_numpy(logits), model(x))
        else:
            with pytest.raises(Exception, match="Reshape|Conv|Concat"):
                session.run(None, {"input": x.numpy()})


@pytest.mark.parametrize("output, format, error, message", [
    ("model.onnx", "torchscript", ValueError, "must end in .pt for format 'torchscript'"),
    ("model.zip", "tflite", ValueError, "format must be one of"),
    ("taken.onnx", "onnx", FileExistsError, "already exists; choose another name"),
    (".", "onnx", ValueError, r"is a folder; give the file to write, ending in \.onnx .*model\.onnx"),
    ("folder", "bioimageio", ValueError, r"is a folder; .*folder/model\.zip"),
    (".pt", "torchscript", ValueError, r"must end in \.pt for format 'torchscript'; e\.g\. model\.pt$"),
])
def test_check_output_names_the_problem(tmp_path, output, format, error, message):
    (tmp_path / "taken.onnx").write_text("a user's file")
    (tmp_path / "folder").mkdir(exist_ok=True)
    with pytest.raises(error, match=message):
        check_output(tmp_path / output, format)
    assert (tmp_path / "taken.onnx").read_text() == "a user's file"


def unwritable(monkeypatch, folder):
    """``folder`` as a user without write permission sees it (the tests may run as root, whom chmod does not stop)."""
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (os.fspath(path) != os.fspath(folder)
                                                                 and access(path, mode, **kw)))


@pytest.mark.parametrize("output, error, message", [
    ("a_file/m.onnx", ValueError, r"output: '.*a_file' is a file, not a folder"),
    ("a_file/deeper/m.onnx", ValueError, r"output: '.*a_file/deeper' cannot be created: '.*a_file' is a file"),
    ("broken_link.onnx", FileExistsError, "already exists; choose another name"),
    ("read_only/m.onnx", ValueError, r"output: '.*read_only': no permission to write in '.*read_only'"),
    ("read_only/new/m.onnx", ValueError, r"output: '.*read_only/new': no permission to write in '.*read_only'"),
    ("a" * 240 + ".onnx", ValueError, r"its name is 245 bytes; export writes it first as a hidden temporary file "
                                      r"beside it, 23 bytes longer, .* use a name of at most 232 bytes"),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys, output, error,
                                                                     message):
    """Each of these was found after the export's work, naming a file the user never gave
    (".NAME.<hex>.partial.onnx"), or nothing at all (torch.jit.save's "[enforce fail at inline_container.cc]");
    a broken link was "an output that appeared while it was being written", or replaced where a file system has
    no hard links. Now `unet-fast export` refuses them before it reads the model (here: one that does not exist)."""
    (tmp_path / "a_file").write_text("a user's file")
    (tmp_path / "broken_link.onnx").symlink_to(tmp_path / "nowhere")
    (tmp_path / "read_only").mkdir()
    unwritable(monkeypatch, tmp_path / "read_only")
    with pytest.raises(error, match=message):
        check_output(tmp_path / output, "onnx")
    arguments = ["export", str(tmp_path / "missing.safetensors"), "--format", "onnx", "-o", str(tmp_path / output)]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith("unet-fast export: error: argument -o/--output: ") and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["a_file", "broken_link.onnx", "read_only"]
    assert (tmp_path / "a_file").read_text() == "a user's file" and os.listdir(tmp_path / "read_only") == []


def test_a_name_as_long_as_its_temporary_allows_is_written(tmp_path):
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    output = tmp_path / ("a" * (longest - 23 - len(".pt")) + ".pt")      # its temporary: 23 bytes longer
    export_torchscript(net(), output)
    assert os.listdir(tmp_path) == [output.name]


def test_new_file_never_replaces_a_file_that_appears_meanwhile(tmp_path):
    target = tmp_path / "out.pt"
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        with new_file(target) as temporary:
            temporary.write_text("export")
            target.write_text("a user's file")
    assert target.read_text() == "a user's file"
    assert sorted(os.listdir(tmp_path)) == ["out.pt"]          # the temporary is gone


def test_new_file_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with new_file(tmp_path / "out.pt") as temporary:
            temporary.write_text("half")
            raise RuntimeError("export failed")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def model_file(tmp_path):
    return unet_fast.save_model(net(), tmp_path / "model.safetensors")


def test_cli_export_torchscript(tmp_path, model_file, capsys):
    assert cli.main(["export", str(model_file), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 0
    assert f"wrote {tmp_path / 'm.pt'}" in capsys.readouterr().out
    x = torch.randn(1, 1, 60, 60)
    with torch.no_grad():
        assert_close(torch.jit.load(str(tmp_path / "m.pt"))(x), net()(x))


@pytest.mark.parametrize("arguments, message", [
    (["--format", "onnx", "-o", "{tmp}/taken.onnx"], "already exists; choose another name or remove it"),
    (["--format", "torchscript", "-o", "{tmp}/m.onnx"], "must end in .pt for format 'torchscript'"),
    (["--format", "onnx", "-o", "{tmp}/m.onnx", "--name", "x"], "argument --name: an option of --format bioimageio only"),
])
def test_cli_export_refuses_bad_outputs(tmp_path, model_file, capsys, arguments, message):
    """Usage errors, as every command's: exit status 2, one line naming the argument, nothing written."""
    (tmp_path / "taken.onnx").write_text("a user's file")
    assert cli.main(["export", str(model_file)] + [a.format(tmp=tmp_path) for a in arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "taken.onnx").read_text() == "a user's file"
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "taken.onnx"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a model", "not a readable .safetensors file"),
])
def test_cli_export_refuses_unreadable_models(tmp_path, capsys, content, message):
    model = tmp_path / "model.safetensors"
    if content is not None:
        model.write_bytes(content)
    assert cli.main(["export", str(model), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unet-fast export: error: argument model: ") and message in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("channels, image, message", [
    (2, None, "argument --test-image: test_image is needed: the model takes 2 channels"),
    (1, np.zeros((3, 64, 64), np.uint8), "argument --test-image: test_image must be (H, W) or (C, H, W) with C = 1"),
    (1, np.zeros((20, 64), np.uint8), "argument --test-image: test_image of shape (1, 20, 64) is too small"),
])
def test_cli_export_names_a_test_image_that_does_not_fit(tmp_path, capsys, channels, image, message):
    """A usage error of --test-image (exit 2, the flag named), found before any work; it used to be an exit 1
    naming the Python argument test_image."""
    model = unet_fast.save_model(net(in_channels=channels), tmp_path / "model.safetensors")
    arguments = ["export", str(model), "--format", "bioimageio", "-o", str(tmp_path / "m.zip")]
    if image is not None:
        tifffile.imwrite(tmp_path / "test.tif", image)
        arguments += ["--test-image", str(tmp_path / "test.tif")]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.zip").exists()


def test_cli_export_refuses_an_unknown_format(tmp_path, model_file, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["export", str(model_file), "--format", "tflite", "-o", str(tmp_path / "m.pt")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "argument --format: invalid choice: 'tflite'" in err and "bioimageio" in err


def test_a_missing_optional_package_is_named_with_the_install_line_the_readme_gives():
    """It said pip install 'unet_fast[export]', which asks the package index for a package installed from a checkout."""
    from unet_fast.export import require

    with pytest.raises(ImportError, match=r"'no_such_module_here': install the extra, in the unet_fast checkout: "
                                          r"pip install --no-build-isolation -e \"\.\[export\]\""):
        require("no_such_module_here", "ONNX export")
