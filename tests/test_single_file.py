"""Single-file (LDM layout) checkpoints: a tiny diffusers folder, exported to one file by
tests/ldm_export.py, must load back as the very same networks, offline and without running code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from ldm_export import export_single_file, ldm_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from sdgen.errors import PickleRefused, SdgenError
from sdgen.models.single_file import components_from_state_dict, load_single_file

NETWORKS = ("unet", "vae", "text_encoder")
PROMPT = "a photograph of an astronaut riding a horse"
UNET_FIELDS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "use_linear_projection",
    "transformer_layers_per_block",
    "norm_num_groups",
)
VAE_FIELDS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "scaling_factor",
)
TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
)


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def folder(family: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{family}")  # conftest's session-wide tiny models


@pytest.fixture(scope="module")
def checkpoint(folder: Path, family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(folder, tmp_path_factory.mktemp(family) / "model.safetensors")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> dict:
    return load_single_file(checkpoint, dtype=torch.float32, allow_pickle=False)


@pytest.fixture(scope="module")
def reference(folder: Path) -> dict:
    """The same model as diffusers and transformers load it from the folder."""
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet").eval(),
        "vae": AutoencoderKL.from_pretrained(folder / "vae").eval(),
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        "scheduler_config": json.loads(
            (folder / "scheduler" / "scheduler_config.json").read_text()
        ),
    }


def assert_same_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert sorted(ours_sd) == sorted(theirs_sd)
    different = [k for k in ours_sd if not torch.equal(ours_sd[k], theirs_sd[k])]
    assert not different, different[:5]


def test_returns_exactly_the_components(loaded: dict) -> None:
    assert sorted(loaded) == ["scheduler_config", "text_encoder", "tokenizer", "unet", "vae"]
    assert isinstance(loaded["unet"], UNet2DConditionModel)
    assert isinstance(loaded["vae"], AutoencoderKL)
    assert isinstance(loaded["text_encoder"], CLIPTextModel)
    assert isinstance(loaded["tokenizer"], CLIPTokenizer)
    for network in NETWORKS:
        assert {p.device.type for p in loaded[network].parameters()} == {"cpu"}
        assert {p.dtype for p in loaded[network].parameters()} == {torch.float32}


@pytest.mark.parametrize("network", NETWORKS)
def test_weights_equal_the_folder(loaded: dict, reference: dict, network: str) -> None:
    # SD 2.x: the exported OpenCLIP tower has one more layer, which the loader must drop
    assert_same_weights(loaded[network], reference[network])


def test_configs_inferred_from_shapes(loaded: dict, reference: dict, family: str) -> None:
    for network, fields in (
        ("unet", UNET_FIELDS),
        ("vae", VAE_FIELDS),
        ("text_encoder", TEXT_FIELDS),
    ):
        ours, theirs = loaded[network].config, reference[network].config
        for field in fields:
            ours_value, theirs_value = getattr(ours, field), getattr(theirs, field)
            if isinstance(theirs_value, (list, tuple)):
                ours_value, theirs_value = list(ours_value), list(theirs_value)
            assert ours_value == theirs_value, f"{network}.{field}"
    # a single file records no image size: the family's (512 px; 768 px for SD 2.x v), not the
    # tiny folder's 16
    assert loaded["unet"].config.sample_size == {"sd1": 64, "sd2": 96}[family]


def test_attention_heads_equal_the_folder(loaded: dict, reference: dict) -> None:
    # head counts are invisible in the weights; a wrong guess would still load strictly
    def heads(model: torch.nn.Module) -> list[tuple[str, int]]:
        return [(n, m.heads) for n, m in model.named_modules() if isinstance(m, Attention)]

    for network in ("unet", "vae"):
        assert heads(loaded[network]) == heads(reference[network])
        assert heads(loaded[network])  # there is attention to compare
    text_layers = [layer.self_attn.num_heads for layer in loaded["text_encoder"].encoder.layers]
    assert text_layers == [reference["text_encoder"].config.num_attention_heads] * len(text_layers)


@torch.no_grad()
def test_networks_compute_the_same(loaded: dict, reference: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)  # (B, 4, H/2, W/2): tiny VAE factor 2
    context = torch.randn(2, 7, 32, generator=generator)  # (B, tokens, cross_attention_dim)
    timestep = torch.tensor([10, 500])
    ours = loaded["unet"](latents, timestep, encoder_hidden_states=context).sample
    theirs = reference["unet"](latents, timestep, encoder_hidden_states=context).sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    ours = loaded["vae"].decode(latents).sample
    theirs = reference["vae"].decode(latents).sample
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    ids = reference["tokenizer"](PROMPT, padding="max_length", return_tensors="pt").input_ids
    ours = loaded["text_encoder"](ids).last_hidden_state
    theirs = reference["text_encoder"](ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_tokenizer_matches_the_folder(loaded: dict, reference: dict, family: str) -> None:
    def ids(tokenizer: CLIPTokenizer) -> list[int]:
        return tokenizer(PROMPT, padding="max_length", truncation=True).input_ids

    assert ids(loaded["tokenizer"]) == ids(reference["tokenizer"])
    assert len(ids(loaded["tokenizer"])) == 77
    assert loaded["tokenizer"].pad_token == {"sd1": "<|endoftext|>", "sd2": "!"}[family]


def test_scheduler_config_matches_the_family(loaded: dict, reference: dict, family: str) -> None:
    config = loaded["scheduler_config"]
    assert config["_class_name"] == "PNDMScheduler"
    assert config["prediction_type"] == {"sd1": "epsilon", "sd2": "v_prediction"}[family]
    expected = {k: v for k, v in reference["scheduler_config"].items() if k != "_diffusers_version"}
    assert config == expected  # the folder's scheduler_config.json, field for field
    scheduler = PNDMScheduler.from_config(config)
    assert scheduler.config.prediction_type == config["prediction_type"]


def test_pickle_checkpoint_needs_allow_pickle(folder: Path, loaded: dict, tmp_path: Path) -> None:
    ckpt = export_single_file(folder, tmp_path / "model.ckpt")
    with pytest.raises(PickleRefused, match="--allow-pickle"):
        load_single_file(ckpt, dtype=torch.float32, allow_pickle=False)
    from_pickle = load_single_file(ckpt, dtype=torch.float32, allow_pickle=True)
    for network in NETWORKS:
        assert_same_weights(from_pickle[network], loaded[network])
    assert from_pickle["scheduler_config"] == loaded["scheduler_config"]


def test_dtype_is_applied(checkpoint: Path) -> None:
    components = load_single_file(checkpoint, dtype=torch.bfloat16, allow_pickle=False)
    for network in NETWORKS:
        assert {p.dtype for p in components[network].parameters()} == {torch.bfloat16}


class _Payload:
    """Pickles as a call that creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    ckpt, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1), "payload": _Payload(marker)}}, ckpt)
    with pytest.raises(SdgenError, match="evil.ckpt") as raised:
        load_single_file(ckpt, dtype=torch.float32, allow_pickle=True)
    assert not isinstance(raised.value, PickleRefused)  # it was allowed, and still refused
    assert "could run code" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not marker.exists()
    # control: the payload is live, so the check above means something
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_unrelated_tensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(()), "text.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(
        SdgenError, match=r"not an SD 1\.x/2\.x checkpoint: found 2 tensors"
    ) as raised:
        load_single_file(path, dtype=torch.float32, allow_pickle=False)
    assert "lora_unet_down.alpha" in str(raised.value)


def test_sdxl_is_named_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "sdxl.safetensors"
    keys = (
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.conv_in.weight",
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
    )
    save_file({key: torch.zeros(8, 4, 3, 3) for key in keys}, path)
    with pytest.raises(SdgenError, match="'xl_base' checkpoint; supported are"):
        load_single_file(path, dtype=torch.float32, allow_pickle=False)


def test_missing_weights_are_reported(checkpoint: Path, tmp_path: Path) -> None:
    state = load_file(checkpoint)
    del state["model.diffusion_model.out.2.bias"]
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    with pytest.raises(SdgenError, match=r"unet weights do not fit.*missing 1: conv_out\.bias"):
        load_single_file(path, dtype=torch.float32, allow_pickle=False)


def test_a_truncated_unet_is_reported(checkpoint: Path, tmp_path: Path) -> None:
    # no out_layers.3 (conv2) in the first resnet: a tensor the config is inferred from
    state = {k: v for k, v in load_file(checkpoint).items() if ".input_blocks.1.0." not in k}
    path = tmp_path / "truncated.safetensors"
    save_file(state, path)
    with pytest.raises(SdgenError, match=r"looks like SD \d\.x but its tensors do not form one"):
        load_single_file(path, dtype=torch.float32, allow_pickle=False)


@pytest.fixture(scope="module")
def sd2_checkpoint(tiny_sd2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(tiny_sd2, tmp_path_factory.mktemp("sd2") / "model.safetensors")


@pytest.mark.parametrize(
    ("yaml", "prediction_type", "sample_size"),
    [
        (None, "v_prediction", 96),  # SD 2.1 768 is the default
        ('model:\n  params:\n    parameterization: "v"\n', "v_prediction", 96),
        ("model:\n  params:\n    linear_start: 0.00085\n", "epsilon", 64),  # 2.x-base
    ],
)
def test_sd2_yaml_decides_v_or_epsilon(
    sd2_checkpoint: Path, tmp_path: Path, yaml: str | None, prediction_type: str, sample_size: int
) -> None:
    path = tmp_path / "model-2.safetensors"
    os.symlink(sd2_checkpoint, path)
    if yaml is not None:  # A1111's convention: the config sits beside the file, same stem
        (tmp_path / "model-2.yaml").write_text(yaml)
    components = load_single_file(path, dtype=torch.float32, allow_pickle=False)
    assert components["scheduler_config"]["prediction_type"] == prediction_type
    assert components["unet"].config.sample_size == sample_size


# diffusers' published configs (the fields a shape-inferred config sets), as the repos'
# unet/, vae/ and text_encoder/ config.json files give them
_SD_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": 1,
    "norm_num_groups": 32,
}
_SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4}
_OFFICIAL = {
    "sd1": (  # stable-diffusion-v1-5
        {
            **_SD_UNET,
            "sample_size": 64,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "use_linear_projection": False,
            "upcast_attention": False,
        },
        {**_SD_VAE, "sample_size": 512},
        {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
        },
    ),
    "sd2": (  # stable-diffusion-2-1 (768, v)
        {
            **_SD_UNET,
            "sample_size": 96,
            "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20],
            "use_linear_projection": True,
            "upcast_attention": True,
        },
        {**_SD_VAE, "sample_size": 768},
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "hidden_act": "gelu",
        },
    ),
}


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_real_layouts_infer_the_official_configs(family: str) -> None:
    """Full-size SD 1.5 / 2.1 layouts (shapes only, on the meta device) give diffusers' configs."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig

    unet_cfg, vae_cfg, text_cfg = _OFFICIAL[family]
    with init_empty_weights():  # no memory, no weights: only the key layout and shapes matter
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(
            **vae_cfg,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    state = ldm_state_dict(
        unet=(unet.state_dict(), dict(unet.config)),
        vae=(vae.state_dict(), dict(vae.config)),
        text_encoder=(text_encoder.state_dict(), text_encoder.config.to_dict()),
    )
    components = components_from_state_dict(
        state, path=Path("real.safetensors"), dtype=torch.float16
    )
    for network, expected in zip(NETWORKS, _OFFICIAL[family], strict=True):
        config = components[network].config
        for field, value in expected.items():
            got = getattr(config, field)
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{network}.{field}"
    # strict loading passed: every real key found its place; and SD 2.x's 24th layer was dropped
    assert sorted(components["unet"].state_dict()) == sorted(unet.state_dict())
