"""Vision transformers: token labels, image scans, Fix-Reg-Mean, loading, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from vision_planting import Plant, loaded_tiny, plant_vit, processor_for, tiny_vit

from massact.cli import main
from massact.errors import MassactError
from massact.models.loading import load_model
from massact.scan import scan
from massact.vision import ImageScanConfig
from massact.vision import run as scan_images
from massact.vision.fix_reg_mean import fix_reg_mean, knn_predict, model_label_ids
from massact.vision.images import find_images, write_sample_folder
from massact.vision.pipeline import TokenLayout, VisionPipeline, vision_module

CLS_PLANT = Plant(block=1, token="CLS", dim=17)
REG_PLANT = Plant(block=2, token="reg2", dim=9)
REGISTER_FAMILIES = {"dinov2_reg"}


@pytest.fixture(scope="module")
def photos():
    """Three real photos bundled with scikit-image."""
    return find_images("samples").take(3)


def _planted(family: str, classifier: bool = False):
    loaded = loaded_tiny(family, classifier)
    plants = [CLS_PLANT] + ([REG_PLANT] if family in REGISTER_FAMILIES else [])
    plant_vit(loaded.model, plants)
    return loaded, plants


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_token_layout_labels():
    layout = TokenLayout(num_cls=1, num_registers=4, grid=(2, 3))
    assert layout.labels() == ["CLS", "reg0", "reg1", "reg2", "reg3"] + [
        "patch(0,0)", "patch(0,1)", "patch(0,2)", "patch(1,0)", "patch(1,1)", "patch(1,2)",
    ]  # fmt: skip
    assert layout.kinds()[:6] == ["cls", "register", "register", "register", "register", "patch"]
    assert layout.register_positions == [1, 2, 3, 4]
    assert TokenLayout(num_cls=0, num_registers=0, grid=(1, 2)).labels() == ["patch(0,0)", "patch(0,1)"]


@pytest.mark.parametrize("family", ["vit", "clip", "clip_full", "dinov2", "dinov2_reg"])
def test_scan_finds_planted_activations_with_labels(family, photos):
    loaded, plants = _planted(family)
    before = _state(loaded.model)
    result = scan_images(loaded, photos, ImageScanConfig(keep_first_massive=True, progress=False))
    registers = 4 if family in REGISTER_FAMILIES else 0
    assert result.layout == TokenLayout(num_cls=1, num_registers=registers, grid=(4, 4))
    assert result.result.tokens[0] == "CLS" and result.result.tokens[-1] == "patch(3,3)"
    found = {(s["token_text"], s["dim"], s["first_block"]) for s in result.result.summary["sites"]}
    assert found == {(p.token, p.dim, p.block) for p in plants}
    over = {(s["token_text"], s["dim"]): s["num_images"] for s in result.sites_over_images()}
    assert over == {(p.token, p.dim): len(photos) for p in plants}
    assert all(m.kind == ("cls" if m.token_text == "CLS" else "register") for m in result.result.massive)
    norms = result.norm_summary(block=3)
    assert all(sorted(row) == sorted(p.token for p in plants) for row in norms["high_norm_tokens"])
    data = result.to_json()
    assert data["tokens"] == result.layout.labels() and data["token_kinds"] == result.layout.kinds()
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_image_json_follows_the_text_scan_contract(photos):
    from planting import MARK, tiny_model

    from massact.models.loading import LoadedModel

    class Ids:  # the smallest tokenizer: every character is token MARK
        all_special_ids: list[int] = []

        def __call__(self, text, return_tensors, add_special_tokens):
            return {"input_ids": torch.full((1, len(text)), MARK)}

        def decode(self, ids):
            return "x"

    text_data = scan(LoadedModel(model=tiny_model("llama"), tokenizer=Ids()), "abc").to_json()
    loaded, _ = _planted("dinov2_reg")
    data = scan_images(loaded, photos, ImageScanConfig(progress=False)).to_json()
    assert set(text_data) <= set(data)
    assert set(text_data["blocks"][0]) == set(data["blocks"][0]) and set(text_data["summary"]) == set(data["summary"])
    assert {"index", "median", "top", "top1_ratio", "num_massive"} <= set(data["blocks"][0])
    assert data["massive"][0]["token_text"] in ("CLS", "reg2")
    assert len(data["images"]) == 3 and len(data["images"][0]["norms"]) == len(data["tokens"])
    assert data["over_images"]["num_images"] == 3


def test_fix_reg_mean_keeps_outputs_zeroing_does_not(photos):
    loaded = loaded_tiny("dinov2_reg", classifier=True)
    plant_vit(loaded.model, [Plant(block=0, token=f"reg{r}", dim=9 + r) for r in range(4)])
    before = _state(loaded.model)
    images = find_images("samples")
    result, means = fix_reg_mean(loaded, images, images, batch_size=4)
    rows = {row["setting"]: row for row in result.rows}
    assert means.means.shape == (4, 4, 32) and means.positions == [1, 2, 3, 4]
    assert float(means.means[0, 2, 11]) == pytest.approx(float(means.means[3, 2, 11]), rel=0.05)
    assert abs(float(means.means[0, 2, 11])) > 1000
    assert rows["original"]["relative_logit_change"] == 0.0
    assert rows["zero-registers"]["relative_logit_change"] > 0.01
    assert rows["fix-reg-mean"]["relative_logit_change"] < 0.05 * rows["zero-registers"]["relative_logit_change"]
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_fix_reg_mean_needs_registers(photos):
    loaded, _ = _planted("dinov2")
    with pytest.raises(MassactError, match="no register tokens"):
        fix_reg_mean(loaded, photos, photos)


def test_knn_and_label_mapping():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.95, 0.05]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert knn_predict(features, labels, k=1).tolist() == [1, 1, 1, 1, 0]
    config = type("C", (), {"id2label": {0: "tabby, tabby cat", 1: "rocket", 2: "astronaut"}})()
    assert model_label_ids(config, ["rocket", "Tabby_cat", "2"]) == [1, 0, 2]
    assert model_label_ids(config, ["rocket", "horse"]) is None


def test_labelled_folder_and_samples(tmp_path):
    image_set = write_sample_folder(tmp_path / "set", crops=2, size=40)
    assert image_set.labelled and len(image_set) == 2 * len(image_set.classes) and "chelsea" in image_set.classes
    spread = image_set.spread(len(image_set.classes))
    assert sorted(spread.labels) == list(range(len(image_set.classes)))


def test_loader_builds_vision_pipelines_from_saved_hub_layouts(tmp_path, photos):
    """Saved like openai/clip-vit-large-patch14 (CLIPModel + tokenizer + processor) and a DINOv2-reg repo."""
    import transformers as tf

    for family in ("clip_full", "dinov2_reg"):
        model, plants = tiny_vit(family), [CLS_PLANT] + ([REG_PLANT] if family == "dinov2_reg" else [])
        plant_vit(model, plants)
        folder = tmp_path / family
        model.save_pretrained(folder)
        processor_for(family).save_pretrained(folder)
        if family == "clip_full":
            vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
            (tmp_path / "vocab.json").write_text(json.dumps(vocab))
            (tmp_path / "merges.txt").write_text("#version: 0.2\n")
            tf.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(folder)
        loaded = load_model(str(folder), device="cpu")
        pipeline = VisionPipeline(loaded)
        expected = {
            "clip_full": (tf.CLIPModel, tf.CLIPImageProcessor),
            "dinov2_reg": (tf.Dinov2WithRegistersModel, tf.BitImageProcessor),
        }
        assert isinstance(loaded.model, expected[family][0])
        assert isinstance(loaded.processor, expected[family][1])
        assert pipeline.module is vision_module(loaded.model)
        if family == "clip_full":
            assert loaded.tokenizer is not None and pipeline.module is loaded.model.vision_model
        result = scan_images(loaded, photos, ImageScanConfig(progress=False))
        assert {(s["token_text"], s["dim"]) for s in result.result.summary["sites"]} == {
            (p.token, p.dim) for p in plants
        }


def _cli(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_reg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dinov2-reg")
    model = tiny_vit("dinov2_reg")
    plant_vit(model, [CLS_PLANT, REG_PLANT])
    model.save_pretrained(folder)
    processor_for("dinov2_reg").save_pretrained(folder)
    return folder


def test_cli_scan_images_writes_outputs(saved_reg, tmp_path, capsys):
    out = tmp_path / "out"
    code, _ = _cli(["scan", str(saved_reg), "--images", "samples", "--num-images", "3", "--out", str(out)], capsys)
    assert code in (0, None)
    for name in ("scan.json", "report.md", "layerwise.png", "activations_3d.png", "token_norms.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "scan.json").read_text())
    assert data["input"] == "images" and data["tokens"][:5] == ["CLS", "reg0", "reg1", "reg2", "reg3"]
    assert {s["token_text"] for s in data["over_images"]["sites"]} == {"CLS", "reg2"}
    assert "reg2" in (out / "report.md").read_text()


@torch.no_grad()
def reference_fix_reg_mean(folder, mean_paths, eval_set) -> tuple[torch.Tensor, dict[str, float]]:
    """Register means and the 1-NN accuracy of each setting, in plain transformers and torch.

    The model and its image processor are loaded by transformers itself; plain forward hooks read (and,
    per setting, overwrite) the register outputs of every layer; the features are the pooled output; the
    1-NN label is the most cosine-similar other image's.
    """
    import torch.nn.functional as F
    import transformers as tf
    from PIL import Image

    model = tf.Dinov2WithRegistersModel.from_pretrained(folder).eval()
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    registers = slice(1, 1 + model.config.num_register_tokens)

    def forward(paths, hook_for) -> torch.Tensor:
        handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(model.encoder.layer)]
        try:
            images = [Image.open(p).convert("RGB") for p in paths]
            return model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).pooler_output
        finally:
            for handle in handles:
                handle.remove()

    sums: dict[int, torch.Tensor] = {}

    def summing(i):
        def hook(module, args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            sums[i] = hidden[:, registers].double().sum(0)

        return hook

    forward(mean_paths, summing)
    means = torch.stack([sums[i] for i in range(len(sums))]).float() / len(mean_paths)

    def replacing(values):
        def hook_for(i):
            def hook(module, args, out):
                hidden = (out[0] if isinstance(out, tuple) else out).clone()
                hidden[:, registers] = values[i]
                return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

            return hook

        return hook_for

    labels = torch.tensor(eval_set.labels)
    accuracy = {}
    for setting, hook_for in (
        ("original", lambda i: lambda module, args, out: None),
        ("fix-reg-mean", replacing(means)),
        ("zero-registers", replacing(torch.zeros_like(means))),
    ):
        x = F.normalize(forward(eval_set.paths, hook_for).double(), dim=-1)
        similarity = x @ x.T
        similarity.fill_diagonal_(-float("inf"))
        accuracy[setting] = float((labels[similarity.argmax(1)] == labels).double().mean())
    return means, accuracy


def test_cli_fix_reg_mean_knn_accuracy_equals_plain_torch(saved_reg, tmp_path, capsys):
    labelled = write_sample_folder(tmp_path / "set", crops=2, size=40)
    out = tmp_path / "frm"
    argv = ["vit", "fix-reg-mean", str(saved_reg), "--images", "samples", "--samples", "4", "--eval",
            str(tmp_path / "set"), "--k", "1", "--out", str(out)]  # fmt: skip
    code, _ = _cli(argv, capsys)
    assert code in (0, None)
    data = json.loads((out / "fix_reg_mean.json").read_text())
    assert [row["setting"] for row in data["settings"]] == ["original", "fix-reg-mean", "zero-registers"]
    assert data["mean_images"] == 4 and data["eval_images"] == len(labelled)
    mean_paths = find_images("samples").paths[:4]  # unlabelled: --samples 4 takes the first four
    means, accuracy = reference_fix_reg_mean(saved_reg, mean_paths, find_images(tmp_path / "set", "--eval"))
    assert {row["setting"]: row["knn_accuracy"] for row in data["settings"]} == pytest.approx(accuracy, abs=1e-12)
    assert accuracy["zero-registers"] != accuracy["original"]  # the registers matter to the features
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(out / "register_means.safetensors")["means"], means, rtol=1e-5, atol=1e-3)
    assert "| fix-reg-mean |" in (out / "report.md").read_text()


def test_bad_inputs_exit_2_with_one_line(saved_reg, tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    text_model = tmp_path / "text"
    from planting import tiny_model

    tiny_model("llama").save_pretrained(text_model)
    cases = [
        (["scan", str(saved_reg), "--images", str(fake)], "not an image file"),
        (["scan", str(saved_reg), "--images", str(empty)], "no image files"),
        (["scan", str(text_model), "--images", "samples"], "not a vision transformer"),
        (["scan", str(saved_reg), "--prompt", "hello"], "vision model and takes no text prompt"),
        (["scan", str(saved_reg), "--images", "samples", "--prompt", "hello"], "not both"),
        (["vit", "fix-reg-mean", str(saved_reg), "--images", str(tmp_path / "missing")], "no such file or folder"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code == 2, argv
        assert message in err and err.count("\n") == 1, err


def test_vit_commands_print_json_and_write_the_same(saved_reg, tmp_path, capsys):
    out = tmp_path / "frm"
    argv = ["vit", "fix-reg-mean", str(saved_reg), "--images", "samples", "--samples", "3", "--k", "1"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--json", "--out", str(out)])
    assert exit_info.value.code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads((out / "fix_reg_mean.json").read_text())
    assert data["num_registers"] == 4 and data["mean_images"] == 3
    scan_out = tmp_path / "scan"
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", str(saved_reg), "--images", "samples", "--num-images", "2", "--json", "--out", str(scan_out)])
    assert exit_info.value.code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads((scan_out / "scan.json").read_text())
    assert data["over_images"]["num_images"] == 2


def test_fix_reg_mean_help_describes_a_vision_model(capsys):
    with pytest.raises(SystemExit):
        main(["vit", "fix-reg-mean", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "vision transformer with register tokens" in text and "SmolLM2" not in text


def test_dim_ticks_label_every_massive_dim_without_overlap():
    from massact.report.figures import dim_ticks

    ticks, labels, marked = dim_ticks(576, [507, 138, 510, 3])
    assert [label for label, m in zip(labels, marked) if m] == ["3", "138", "507/510"]
    assert ticks == sorted(ticks)
    assert all(b - a >= 0.04 * 576 for a, b in zip(ticks, ticks[1:]))


def test_sample_folder_is_written_whole_and_never_over_a_full_folder(tmp_path):
    from massact.errors import MassactError
    from massact.vision.images import sample_photo_paths
    from massact.vision.samples import write_samples

    written = write_samples(tmp_path / "samples", crops=2)
    photos = sorted(p.stem for p in sample_photo_paths())
    assert sorted(written["classes"]) == photos
    on_disk = sorted(str(p.relative_to(tmp_path / "samples")) for p in (tmp_path / "samples").rglob("*.png"))
    assert written["images"] == on_disk and len(on_disk) == 2 * len(photos)
    assert find_images(tmp_path / "samples").classes == written["classes"]
    with pytest.raises(MassactError, match="not empty"):
        write_samples(tmp_path / "samples", crops=2)
