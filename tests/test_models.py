"""btseg.models: the registry, output shapes, bad inputs, a tiny overfit, checkpoint round trip."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from btseg import config
from btseg.errors import PipelineError
from btseg.models import MODELS, create_model, load_model_file, write_model_file
from btseg.models.unet import UNet
from btseg.training.losses import bce_dice_loss

MODEL_NAMES = ["resunet", "unet"]  # the configurable-depth family; resnet34_unet has its own tests below


@pytest.fixture(autouse=True)
def one_thread_and_restored_rng():
    """Tiny convs are fastest, and steadiest on a busy machine, on one thread; seeds stay local."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", config.MODEL_NAMES)
def test_every_name_params_accept_builds_a_model(name):
    # params validation takes its names from config (no torch there); each must build and run here
    model = create_model(name, in_channels=3, out_channels=2, base_channels=4, depth=2).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'vnet'; expected one of") as error:
        create_model("vnet", in_channels=1)
    assert all(name in str(error.value) for name in config.MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_create_model_builds_the_registered_class(name):
    model = create_model(name, in_channels=2, base_channels=4, depth=2)
    assert type(model) is MODELS[name]
    assert model.depth == 2


# (batch, in_channels, base_channels, depth, height, width)
SHAPE_CASES = [
    (1, 1, 4, 1, 8, 8),
    (2, 4, 4, 2, 16, 16),
    (3, 3, 8, 3, 16, 32),  # not square
    (1, 4, 2, 3, 24, 8),  # bottleneck 3 x 1
    (2, 1, 4, 4, 16, 16),  # bottleneck 1 x 1
]


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch, in_channels, base_channels, depth, height, width", SHAPE_CASES)
def test_output_is_one_logit_per_pixel(name, batch, in_channels, base_channels, depth, height, width):
    model = create_model(name, in_channels=in_channels, base_channels=base_channels, depth=depth).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, in_channels, height, width))
    assert out.shape == (batch, 1, height, width)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_in_train_mode(name):
    model = create_model(name, in_channels=4, base_channels=4, depth=2).train()
    assert model(torch.randn(2, 4, 16, 16)).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_width_doubles_per_level(name):
    model = create_model(name, in_channels=3, base_channels=4, depth=3).eval()
    x, widths = torch.zeros(1, 3, 8, 8), []
    for block in model.encoder:
        x = block(x)
        widths.append(x.shape[1])
    assert widths == [4, 8, 16, 32]
    assert model.head.in_channels == 4 and model.head.out_channels == 1


@pytest.mark.parametrize("bad_name", ["UNet", "vnet", "", "unet "])
def test_unknown_model_name_lists_valid_ones(bad_name):
    with pytest.raises(ValueError) as error:
        create_model(bad_name, in_channels=1)
    message = str(error.value)
    assert repr(bad_name) in message
    for name in MODEL_NAMES:
        assert repr(name) in message


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("depth", [0, -1])
def test_depth_below_one_raises(name, depth):
    with pytest.raises(ValueError, match=f"depth must be >= 1, got {depth}"):
        create_model(name, in_channels=1, depth=depth)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    "depth, height, width, pad_to",
    [
        (3, 30, 30, "(32, 32)"),
        (3, 20, 16, "(24, 16)"),  # only the height is off
        (2, 16, 10, "(16, 12)"),  # only the width is off
        (1, 7, 9, "(8, 10)"),
    ],
)
def test_input_not_divisible_names_the_size_to_pad_to(name, depth, height, width, pad_to):
    model = create_model(name, in_channels=1, base_channels=2, depth=depth).eval()
    with pytest.raises(ValueError) as error:
        model(torch.zeros(1, 1, height, width))
    message = str(error.value)
    assert f"({height}, {width})" in message
    assert f"2**depth = {2**depth}" in message
    assert f"pad or resize to {pad_to}" in message


def _noisy_circle(size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """A disc of radius 6 (off centre) plus Gaussian noise, and its mask; both (1, 1, size, size)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((y - 10.0) ** 2 + (x - 13.0) ** 2) <= 36).float()[None, None]
    noise = 0.3 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    return mask + noise, mask


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tiny_model_overfits_one_circle(name):
    image, mask = _noisy_circle()
    model = create_model(name, in_channels=1, base_channels=4, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = bce_dice_loss(model(image), mask)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5  # sanity: an untrained model is not already good
    assert losses[-1] < 0.3
    with torch.no_grad():
        predicted = (model.eval()(image) > 0).float()
    dice = 2 * (predicted * mask).sum() / (predicted.sum() + mask.sum())
    assert dice > 0.95


def _checkpoint(name: str) -> tuple[torch.nn.Module, dict]:
    """A model with non-default weights and BatchNorm statistics, and the contents the train stage's
    model file has for it (written by write_model_file, read back as torch.load reads any file)."""
    model_args = {"in_channels": 2, "base_channels": 4, "depth": 2}
    model = create_model(name, **model_args).train()
    with torch.no_grad():
        model(3 * torch.randn(4, 2, 16, 16) + 1)  # moves BatchNorm running statistics off their defaults
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        _write_model_file(path, name, model_args, model)
        return model.eval(), torch.load(path, weights_only=True)


def _write_model_file(path: Path, name: str, model_args: dict, model: torch.nn.Module) -> None:
    write_model_file(
        path, model=name, model_args=model_args, state_dict=model.state_dict(), threshold=0.4, postprocess="none",
        min_component_voxels=[], tta=False, best_epoch=3, val_case_dice=0.75, stopped_early=False,
        train_params={"epochs": 4, "learning_rate": 0.002, "models": ["unet", "resunet"], "device": "auto"},
        data_meta={"dataset": "brats2020", "channels": ["flair", "t1"], "size": 16, "target": "whole_tumor"},
        inference_meta={"geometry": {}, "source_channels": ["flair", "t1"]})


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_load_model_file_round_trip(name, tmp_path):
    model, checkpoint = _checkpoint(name)
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)

    loaded, loaded_checkpoint = load_model_file(path)

    assert type(loaded) is MODELS[name]
    assert not loaded.training  # eval mode: BatchNorm uses the stored running statistics
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for key in ("model", "model_args", "best_epoch", "val_case_dice", "train_params", "data_meta"):
        assert loaded_checkpoint[key] == checkpoint[key], key
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_load_model_file_accepts_str_path(tmp_path):
    _, checkpoint = _checkpoint("unet")
    torch.save(checkpoint, tmp_path / "model.pt")
    loaded, _ = load_model_file(str(tmp_path / "model.pt"))
    assert isinstance(loaded, UNet)


def test_load_model_file_missing_file(tmp_path):
    path = tmp_path / "models" / "brats2020" / "unet" / "model.pt"
    with pytest.raises(PipelineError) as error:
        load_model_file(path)
    message = str(error.value)
    assert str(path) in message and "missing" in message
    assert "\n" not in message


def _save(value):
    return lambda path: torch.save(value, path)


def _write(data: bytes):
    return lambda path: path.write_bytes(data)


def _wrong_state_dict(path):
    _, checkpoint = _checkpoint("unet")
    checkpoint["model_args"] = {**checkpoint["model_args"], "base_channels": 8}  # weights are for 4
    torch.save(checkpoint, path)


def _unknown_model(path):
    _, checkpoint = _checkpoint("unet")
    torch.save({**checkpoint, "model": "vnet"}, path)


def _unknown_model_arg(path):
    _, checkpoint = _checkpoint("unet")
    torch.save({**checkpoint, "model_args": {**checkpoint["model_args"], "dropout": 0.1}}, path)


@pytest.mark.parametrize(
    "make_file",
    [
        pytest.param(_write(b""), id="empty-file"),
        pytest.param(_write(b"this is not a checkpoint\n"), id="text-file"),
        pytest.param(_write(bytes(range(256)) * 4), id="binary-garbage"),
        pytest.param(_write(b"PK\x03\x04" + b"\0" * 60), id="truncated-zip"),
        pytest.param(_save({"weights": torch.zeros(3)}), id="dict-without-model-keys"),
        pytest.param(_save([1, 2, 3]), id="not-a-dict"),
        pytest.param(_wrong_state_dict, id="state-dict-of-another-shape"),
        pytest.param(_unknown_model, id="unknown-model-name"),
        pytest.param(_unknown_model_arg, id="unknown-model-argument"),
    ],
)
def test_load_model_file_garbage_names_the_path(make_file, tmp_path):
    path = tmp_path / "model.pt"
    make_file(path)
    with pytest.raises(PipelineError) as error:
        load_model_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_load_model_file_directory_instead_of_file(tmp_path):
    with pytest.raises(PipelineError, match="a folder; give the model file inside it") as error:
        load_model_file(tmp_path)
    assert str(tmp_path) in str(error.value)


# --- options: normalisation, dropout, deep supervision ------------------------------------------

@pytest.mark.parametrize("norm, layer", [("batch", torch.nn.BatchNorm2d), ("instance", torch.nn.InstanceNorm2d),
                                         ("group", torch.nn.GroupNorm)])
def test_norm_option_picks_the_layer(norm, layer):
    model = create_model("unet", in_channels=2, base_channels=4, depth=2, norm=norm)
    kinds = {type(m) for m in model.modules()}
    assert layer in kinds \
        and not ({torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm} - {layer}) & kinds


def test_dropout_option_adds_channel_dropout():
    assert any(isinstance(m, torch.nn.Dropout2d) for m in create_model("resunet", in_channels=1, dropout=0.3).modules())
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in create_model("resunet", in_channels=1).modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deep_supervision_adds_coarser_outputs_in_training_only(name):
    model = create_model(name, in_channels=2, out_channels=3, base_channels=4, depth=3, deep_supervision=True)
    outputs = model.train()(torch.zeros(2, 2, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 32), (2, 3, 16, 16), (2, 3, 8, 8)]
    assert tuple(model.eval()(torch.zeros(2, 2, 32, 32)).shape) == (2, 3, 32, 32)


def test_deep_supervision_with_depth_one_is_refused():
    with pytest.raises(ValueError, match="deep supervision needs depth >= 2"):
        create_model("unet", in_channels=1, depth=1, deep_supervision=True)


# --- resnet34_unet ----------------------------------------------------------------------------

# torchvision's resnet34 has 21,797,672 parameters; its fc layer (512 x 1000 + 1000) is not part of the encoder
RESNET34_ENCODER_PARAMETERS = 21_797_672 - 513_000


def test_resnet34_encoder_matches_torchvision_resnet34():
    model = create_model("resnet34_unet", in_channels=3)
    assert sum(p.numel() for p in model.encoder.parameters()) == RESNET34_ENCODER_PARAMETERS
    keys = set(model.encoder.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.2.conv2.weight", "layer2.0.downsample.0.weight",
            "layer3.5.bn2.bias", "layer4.2.conv2.weight"} <= keys and "layer3.6.conv1.weight" not in keys


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_resnet34_unet_loads_torchvision_format_weights_for_any_channel_count(tmp_path, in_channels):
    source = create_model("resnet34_unet", in_channels=3).encoder.state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.items()}
    state.update({"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})  # as torchvision saves it
    torch.save(state, tmp_path / "resnet34.pth")
    model = create_model("resnet34_unet", in_channels=in_channels, out_channels=2,
                         encoder_weights=str(tmp_path / "resnet34.pth"))
    loaded = model.encoder.state_dict()
    assert torch.equal(loaded["layer3.1.conv1.weight"], state["layer3.1.conv1.weight"])
    # the RGB filters averaged and spread over the channels: their sum over channels is kept
    torch.testing.assert_close(loaded["conv1.weight"].sum(dim=1), state["conv1.weight"].sum(dim=1))
    assert tuple(model.eval()(torch.zeros(1, in_channels, 64, 64)).shape) == (1, 2, 64, 64)


def test_resnet34_unet_refuses_weights_of_another_architecture(tmp_path):
    state = create_model("resnet34_unet", in_channels=3).encoder.state_dict()
    del state["layer3.5.conv1.weight"]  # a resnet18-like file lacks the deeper blocks
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: not a torchvision resnet34 state dict \(missing"):
        create_model("resnet34_unet", in_channels=3, encoder_weights=str(tmp_path / "other.pth"))


def test_resnet34_unet_input_must_be_divisible_by_32():
    with pytest.raises(ValueError, match=r"\(48, 48\) is not divisible by the encoder's total stride = 32; "
                                         r"pad or resize to \(64, 64\)"):
        create_model("resnet34_unet", in_channels=1).eval()(torch.zeros(1, 1, 48, 48))
