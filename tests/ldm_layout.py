"""Test helper: turn diffusers-format SD modules back into one original (LDM) SD state dict.

A generalisation of diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`, which
hard-codes SD's 4 blocks x 2 layers: here the block and layer counts come from the module configs,
so tiny test models convert too. Output keys:

- `model.diffusion_model.*`  UNet (input_blocks / middle_block / output_blocks numbering)
- `first_stage_model.*`      VAE (encoder.down.i.block.j, decoder.up.i..., mid.attn_1 with 1x1 conv q/k/v)
- `cond_stage_model.transformer.text_model.*`  CLIP text encoder, SD 1.x layout (default)
- `cond_stage_model.model.*`                   OpenCLIP text encoder, SD 2.x layout (`text_layout="open_clip"`)
- SDXL (`sdxl_to_ldm`): `conditioner.embedders.0.transformer.text_model.*` (CLIP-L) and
  `conditioner.embedders.1.model.*` (OpenCLIP bigG, its `text_projection` as OpenCLIP stores it: transposed), the
  UNet's size embedding as `label_emb.0.*`
"""

from __future__ import annotations

import torch

UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL
    "add_embedding.linear_2.": "label_emb.0.2.",
}
UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
VAE_RESNET = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTN = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _layers(config) -> int:
    """Return `layers_per_block` as one int (per-block lists are not used by SD)."""
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError(f"per-block layers_per_block {layers!r} is not supported")
    return layers


def unet_prefix_map(config) -> dict[str, str]:
    """Map diffusers UNet module prefixes to LDM `input_blocks`/`middle_block`/`output_blocks` ones."""
    n, per = len(config.block_out_channels), _layers(config) + 1
    out: dict[str, str] = {}
    for i, kind in enumerate(config.down_block_types):
        for j in range(per - 1):
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{i * per + j + 1}.0."
            if "CrossAttn" in kind:
                out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{i * per + j + 1}.1."
        if i < n - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * per}.0.op."
    for i, kind in enumerate(config.up_block_types):
        for j in range(per):
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * per + j}.0."
            if "CrossAttn" in kind:
                out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * per + j}.1."
        if i < n - 1:
            slot = 2 if "CrossAttn" in kind else 1
            out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * per + per - 1}.{slot}."
    out["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        out[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    return out


def vae_prefix_map(config) -> dict[str, str]:
    """Map diffusers VAE module prefixes to LDM `encoder.down`/`decoder.up`/`mid` ones."""
    n, layers = len(config.block_out_channels), _layers(config)
    out = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for i in range(n):
        for j in range(layers):
            out[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(layers + 1):
            out[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if i < n - 1:
            out[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            out[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        out[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for j in range(2):
            out[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    return out


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    """Swap the longest matching module prefix, then the first matching inner part after it."""
    match = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    if match is None:
        return key
    rest = key[len(match) :]
    for old, new in inner.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return prefixes[match] + rest


def convert_unet(unet) -> dict[str, torch.Tensor]:
    """Return the UNet weights under LDM names, prefixed `model.diffusion_model.`."""
    prefixes = {**UNET_TOP, **unet_prefix_map(unet.config)}
    out = {}
    for key, value in unet.state_dict().items():
        inner = UNET_RESNET if "resnets." in key else {}
        out["model.diffusion_model." + _rename(key, prefixes, inner)] = value
    return out


def convert_vae(vae) -> dict[str, torch.Tensor]:
    """Return the VAE weights under LDM names, prefixed `first_stage_model.`.

    The mid-block attention projections become 1x1 convolutions ([out, in, 1, 1]) as in SD.
    """
    prefixes = vae_prefix_map(vae.config)
    out = {}
    for key, value in vae.state_dict().items():
        is_attn = ".attentions." in key
        new = _rename(key, prefixes, VAE_ATTN if is_attn else VAE_RESNET)
        if is_attn and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out["first_stage_model." + new] = value
    return out


def _text_state(text_encoder) -> dict[str, torch.Tensor]:
    """Return the CLIP text weights with the `text_model.` prefix (transformers 5 drops it)."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith("text_model.") else "text_model." + key] = value
    return out


def convert_clip_text(text_encoder) -> dict[str, torch.Tensor]:
    """Return the SD 1.x text-encoder layout: `cond_stage_model.transformer.text_model.*`."""
    return {"cond_stage_model.transformer." + k: v for k, v in _text_state(text_encoder).items()}


OPEN_CLIP_PARTS = [
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
    (".self_attn.", ".attn."),
]
OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def convert_open_clip_text(text_encoder, prefix: str = "cond_stage_model.model.") -> dict[str, torch.Tensor]:
    """Return the SD 2.x (OpenCLIP) layout: `cond_stage_model.model.*`, q/k/v fused as `in_proj_*`.

    An identity `text_projection` is added, as SD 2.x files carry one (diffusers ignores it); a
    CLIPTextModelWithProjection's own projection is stored transposed, as OpenCLIP does.
    """
    state = _text_state(text_encoder)
    out, qkv = {}, {}
    projection = state.pop("text_model.text_projection.weight", None)
    for key, value in state.items():
        if key in OPEN_CLIP_TOP:
            out[OPEN_CLIP_TOP[key]] = value
            continue
        for old, new in OPEN_CLIP_PARTS:
            key = key.replace(old, new)
        head, proj, kind = key.rsplit(".", 2)
        if proj in ("q_proj", "k_proj", "v_proj"):
            qkv.setdefault((head, kind), {})[proj[0]] = value
        else:
            out[key] = value
    for (head, kind), parts in qkv.items():
        out[f"{head}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    hidden = text_encoder.config.hidden_size
    out["text_projection"] = torch.eye(hidden) if projection is None else projection.T
    return {prefix + k: v for k, v in out.items()}


def sdxl_to_ldm(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """Return one original-SDXL state dict holding the UNet, VAE and both text encoders."""
    first = {"conditioner.embedders.0.transformer." + k: v for k, v in _text_state(text_encoder).items()}
    second = convert_open_clip_text(text_encoder_2, "conditioner.embedders.1.model.")
    merged = {**convert_unet(unet), **convert_vae(vae), **first, **second}
    return {k: v.detach().contiguous() for k, v in merged.items()}


def diffusers_to_ldm(unet, vae, text_encoder, text_layout: str = "clip") -> dict[str, torch.Tensor]:
    """Return one original-SD state dict holding the UNet, VAE and text encoder.

    `text_layout` is "clip" (SD 1.x, default) or "open_clip" (SD 2.x).
    """
    if text_layout not in ("clip", "open_clip"):
        raise ValueError(f"text_layout must be 'clip' or 'open_clip', not {text_layout!r}")
    text = convert_clip_text(text_encoder) if text_layout == "clip" else convert_open_clip_text(text_encoder)
    merged = {**convert_unet(unet), **convert_vae(vae), **text}
    return {k: v.detach().contiguous() for k, v in merged.items()}
