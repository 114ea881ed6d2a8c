"""build_model: every architecture through one door, trainable, with real torchvision weights."""
import urllib.error

import pytest
import torch
import torchvision

from train.models import DEFAULT_INPUT_HW, MODEL_NAMES, build_model, forward_logits, weights_path

FEATURES = (128, 313)  # [n_mels, n_frames] of a 5-s window


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_maps_feature_windows_to_finite_class_logits(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *FEATURES))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_takes_one_backward_step(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits, aux = forward_logits(model, torch.rand(2, *FEATURES))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3]))
    if aux is not None:
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux, torch.tensor([0, 3]))
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt.step()
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert changed > 0.9 * len(before)


def test_inception_trains_with_its_auxiliary_logits_and_exports_without_them(tmp_path):
    import onnx

    from export.to_onnx import export_graph

    model = build_model("inception_v3", num_classes=4)
    logits, aux = forward_logits(model.train(), torch.rand(2, *FEATURES))
    assert logits.shape == aux.shape == (2, 4)
    model.eval()
    export_graph(model, torch.rand(1, *FEATURES), tmp_path / "inception.onnx", opset=18)  # what `make export` runs
    graph = onnx.load(tmp_path / "inception.onnx").graph
    assert len(graph.output) == 1  # the main logits alone
    assert graph.output[0].type.tensor_type.shape.dim[-1].dim_value == 4


def test_inputs_are_resized_to_each_architectures_input_size():
    for name, hw in DEFAULT_INPUT_HW.items():
        assert build_model(name, 3).adapt(torch.rand(1, *FEATURES)).shape[-2:] == hw


def test_an_unknown_model_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg16'.*simple_cnn, resnet18, inception_v3"):
        build_model("vgg16", 3)


def test_an_input_size_too_small_for_inception_is_refused_naming_both_sizes():
    with pytest.raises(ValueError, match="inception_v3 needs an input of at least 299x299 px, got 128x128"):
        build_model("inception_v3", 3, input_hw=(128, 128))


def test_pretrained_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The real torchvision loading path, fed a weights file already in the hub cache (as a user
    without internet places it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # restored after the test
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18(num_classes=1000)
    target = weights_path(weights)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    model = build_model("resnet18", 5, pretrained=True)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert model.backbone.fc.out_features == 5


def test_a_failed_weights_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # restored after the test

    def no_network(url, dst, *args, **kwargs):  # the network layer only
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(RuntimeError) as err:
        build_model("resnet18", 5, pretrained=True)
    message = str(err.value)
    assert weights.url in message
    assert str(weights_path(weights)) in message
    assert "--no-pretrained" in message


def test_simple_cnn_has_the_design_notes_layers():
    model = build_model("simple_cnn", 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert len(pools) == 3
    assert [lin.out_features for lin in linears] == [256, 10]
    assert [d.p for d in dropouts] == [0.5]


def test_each_architecture_gets_its_standard_input_size():
    feats = torch.rand(1, 128, 313)
    sizes = {name: tuple(build_model(name, 3).adapt(feats).shape[-2:])
             for name in ("simple_cnn", "resnet18", "inception_v3", "efficientnet_b0")}
    assert sizes == {"simple_cnn": (128, 128), "resnet18": (224, 224), "inception_v3": (299, 299),
                     "efficientnet_b0": (224, 224)}


def test_imagenet_backbones_see_the_grey_window_on_three_channels_normalised_by_imagenet_statistics():
    feats = torch.full((1, 128, 313), 0.5)
    x = build_model("resnet18", 3).adapt(feats)
    assert x.shape == (1, 3, 224, 224)
    expected = [(0.5 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    assert [float(x[0, c].mean()) for c in range(3)] == pytest.approx(expected, abs=1e-5)
    assert float(x.std()) == pytest.approx(float(torch.tensor(expected).std(unbiased=False)), abs=1e-3)
    grey = build_model("simple_cnn", 3).adapt(feats)
    assert grey.shape == (1, 1, 128, 128) and torch.allclose(grey, torch.full_like(grey, 0.5))


def test_an_unknown_model_name_lists_every_model_the_kit_can_build():
    with pytest.raises(ValueError) as e:
        build_model("vgg16", 3)
    assert str(e.value) == f"unknown model 'vgg16'; choose one of {', '.join(MODEL_NAMES)}"
    assert "efficientnet_b0" in str(e.value)
