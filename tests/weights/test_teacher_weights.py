"""Teacher weights: files in every supported layout, the hub cache, plugins, and fast failures offline."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from haste_core.errors import HasteError, RecipeError
from tests.plugins.test_teachers import build, images

FAST_S = 5.0  # the bound for failing without weights
EVERYTHING = (frozenset({-1, 0, 5}), frozenset({2, 11}))


def same_outputs(a, b, atol: float = 0.0) -> bool:
    """Equal tokens and logits (exactly, unless a tolerance is given)."""
    out_a, out_b = a.encode(images(), *EVERYTHING), b.encode(images(), *EVERYTHING)
    pairs = [(out_a.tokens[k], out_b.tokens[k]) for k in out_a.tokens]
    pairs += [(out_a.attn_logits[k], out_b.attn_logits[k]) for k in out_a.attn_logits]
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in pairs)


def save(state: dict, path) -> str:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def without_proxies(monkeypatch) -> None:
    """The probe goes through a proxy when the environment names one: keep the machine's own out of the tests."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def facebookresearch_layout(timm_state: dict, *, registers: bool) -> dict:
    """What torch.hub's DINOv2 state dict holds for the same weights: a mask token; with registers, the class
    token's position inside pos_embed and ``register_tokens`` (timm folds that position into cls_token)."""
    state = dict(timm_state, mask_token=torch.randn(1, timm_state["cls_token"].shape[-1]))
    if registers:
        cls_pos = torch.randn_like(state["cls_token"])
        state["pos_embed"] = torch.cat([cls_pos, state.pop("pos_embed")], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos
        state["register_tokens"] = state.pop("reg_token")
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_layout_files_reproduce_the_teacher(plugins, tmp_path, suffix):
    torch.manual_seed(1)
    source = build(plugins, "dinov2_vits14")
    path = save(source.backbone.state_dict(), tmp_path / f"dinov2{suffix}")
    assert same_outputs(build(plugins, "dinov2_vits14", weights=path), source)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_facebookresearch_dinov2_layout_loads_and_positions_are_resampled_once(plugins, tmp_path, name):
    import timm

    torch.manual_seed(2)
    model = "vit_small_patch14_reg4_dinov2" if name.endswith("_reg") else "vit_small_patch14_dinov2"
    native = timm.create_model(model, pretrained=False, num_classes=0)  # 518 px: the released 37×37 grid
    timm_state = native.state_dict()
    timm_file = save(timm_state, tmp_path / "timm.safetensors")
    hub_file = save(facebookresearch_layout(timm_state, registers=name.endswith("_reg")), tmp_path / "hub.pth")
    from_timm = build(plugins, name, weights=timm_file)
    from_hub = build(plugins, name, weights=hub_file)
    assert same_outputs(from_timm, from_hub, atol=1e-5)  # with registers cls_token is (cls - pos) + pos
    prefix = 0 if name.endswith("_reg") else 1  # timm keeps no class position with registers
    table = timm_state["pos_embed"][:, prefix:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    resampled = F.interpolate(table, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    got = from_hub.backbone.pos_embed
    torch.testing.assert_close(got[:, prefix:], resampled.permute(0, 2, 3, 1).reshape(1, 16, -1))
    torch.testing.assert_close(got[:, :prefix], timm_state["pos_embed"][:, :prefix])


def test_clip_full_and_tower_state_dicts_load(plugins, tmp_path):
    torch.manual_seed(3)
    source = build(plugins, "clip_vitb16")
    tower = source.backbone.state_dict()
    full = {f"visual.{k}": v for k, v in tower.items()} | {"token_embedding.weight": torch.zeros(8, 4)}
    for path in (save(tower, tmp_path / "tower.safetensors"), save(full, tmp_path / "open_clip_pytorch_model.bin")):
        assert same_outputs(build(plugins, "clip_vitb16", weights=path), source)
    wide = dict(tower, positional_embedding=torch.randn(1 + 14 * 14, 768))  # saved at 224 px, used at 64 px
    resampled = build(plugins, "clip_vitb16", weights=save(wide, tmp_path / "wide.pth"))
    assert resampled.backbone.positional_embedding.shape == (1 + 4 * 4, 768)


def test_original_mae_checkpoint_with_decoder_loads(plugins, tmp_path):
    torch.manual_seed(4)
    source = build(plugins, "mae_vitb16")
    decoder = {"decoder_embed.weight": torch.zeros(2, 2), "mask_token": torch.zeros(1, 1, 512)}
    state = {"model": source.backbone.state_dict() | decoder}  # as MAE's own checkpoints wrap it
    assert same_outputs(build(plugins, "mae_vitb16", weights=save(state, tmp_path / "mae_pretrain.pth")), source)


def test_bad_files_fail_with_what_is_wrong(plugins, tmp_path):
    small = save(build(plugins, "dinov2_vits14").backbone.state_dict(), tmp_path / "small.pth")
    with pytest.raises(HasteError, match=r"small.pth does not fit teacher dinov2_vitb14: 'cls_token' has shape "
                       r"\(1, 1, 384\) in the file and \(1, 1, 768\) in the model"):  # fmt: skip
        build(plugins, "dinov2_vitb14", weights=small)
    with pytest.raises(RecipeError, match=r"weights: weights file '.*nope.pth' does not exist"):
        build(plugins, "dinov2_vits14", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(RecipeError, match=r"weights: 'dinov2.ckpt' is not 'hub', 'none' or a weights file"):
        build(plugins, "dinov2_vits14", weights="dinov2.ckpt")
    with pytest.raises(RecipeError, match="pretrained: open_clip has no pretrained tag 'nope' for ViT-B-16; choose"):
        build(plugins, "clip_vitb16", pretrained="nope")


# --- the hub ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hub_id", "filename"),
    [
        ("dinov2_vitb14", "timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors"),
        ("clip_vitl14", "timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors"),
        ("mae_vitl16", "timm/vit_large_patch16_224.mae", "model.safetensors"),
    ],
)
def test_offline_hub_fails_at_once_saying_how_to_supply_it(plugins, tmp_path, monkeypatch, name, hub_id, filename):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(HasteError) as caught:
        build(plugins, name, weights="hub")
    assert time.perf_counter() - started < FAST_S
    message = str(caught.value)
    wanted = [f"teacher {name}", "HF_HUB_OFFLINE is set", f"'{hub_id}'", f"'{filename}'"]
    wanted += [f"weights: /path/to/{filename}", "haste prefetch", "haste_resolve_weights"]
    for part in wanted:
        assert part in message, f"{part!r} not in {message!r}"


def test_unreachable_hub_fails_at_once(plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    without_proxies(monkeypatch)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(HasteError, match=r"http://127.0.0.1:9 cannot be reached .*'timm/vit_small_patch14_dinov2"):
        build(plugins, "dinov2_vits14", weights="hub")
    assert time.perf_counter() - started < FAST_S


def fill_hub_cache(root, repo_id: str, filename: str, state: dict) -> None:
    """The layout huggingface_hub writes: refs/main names a snapshot folder holding the file."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save(state, repo / "snapshots" / ("0" * 40) / filename)


def test_hub_weights_come_from_the_cache_offline_and_plugins_come_first(plugins, tmp_path, monkeypatch):
    torch.manual_seed(5)
    cached, offered = build(plugins, "dinov2_vits14"), build(plugins, "dinov2_vits14")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    fill_hub_cache(tmp_path / "hub", "timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors",
                   cached.backbone.state_dict())  # fmt: skip
    assert same_outputs(build(plugins, "dinov2_vits14", weights="hub"), cached)
    mirror = save(offered.backbone.state_dict(), tmp_path / "mirror.pth")
    asked = []

    def resolve(kind, name):
        asked.append((kind, name))
        return mirror

    assert same_outputs(build(plugins, "dinov2_vits14", weights="hub", resolve=resolve), offered)
    assert asked == [("teacher", "dinov2_vits14")]
    with pytest.raises(HasteError, match=r"haste_resolve_weights offered .*gone.pth for teacher dinov2_vits14, but"):
        build(plugins, "dinov2_vits14", weights="hub", resolve=lambda kind, name: tmp_path / "gone.pth")


def test_a_hanging_name_lookup_still_fails_at_once(plugins, tmp_path, monkeypatch):
    """No reachable DNS server: the lookup ignores socket timeouts, so the probe itself must be bounded."""
    from haste_core.weights import hub as weights

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    without_proxies(monkeypatch)

    def hanging_lookup(*args: object, **kwargs: object) -> None:
        time.sleep(8)  # a name lookup with no reachable DNS server; it ends as a real one would
        raise OSError("name resolution timed out")

    monkeypatch.setattr(weights.socket, "create_connection", hanging_lookup)
    started = time.perf_counter()
    with pytest.raises(HasteError, match=r"https://hub.example did not answer within 2 s .*'timm/vit_small_patch14"):
        build(plugins, "dinov2_vits14", weights="hub")
    assert time.perf_counter() - started < FAST_S


def test_the_probe_goes_through_the_proxy_when_one_is_set(plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    without_proxies(monkeypatch)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    with pytest.raises(HasteError, match=r"https://hub.example \(proxy http://127.0.0.1:9\) cannot be reached"):
        build(plugins, "dinov2_vits14", weights="hub")
    assert time.perf_counter() - started < FAST_S
    monkeypatch.setenv("no_proxy", "hub.example")  # exempted: the endpoint itself is probed
    with pytest.raises(HasteError, match=r"https://hub.example (did not answer|cannot be reached \()"):
        build(plugins, "dinov2_vits14", weights="hub")


def test_an_unreadable_file_fails_saying_what_would_do(plugins, tmp_path):
    bad = tmp_path / "dinov2_vits14_pretrain.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(HasteError, match=r"cannot read .*dinov2_vits14_pretrain.pth as a state dict \(.*\); give a "
                       r"\.safetensors file or a torch.save'd state dict"):  # fmt: skip
        build(plugins, "dinov2_vits14", weights=str(bad))
