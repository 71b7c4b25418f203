"""Save a diffusers pipeline as one file in the original (LDM / A1111 / ComfyUI) layout.

Community checkpoints ship this way; the tests build tiny random-weight pipelines,
write them here, and load them back through the engine's single-file loader.
Only the names move (and OpenCLIP's fused attention): no tensor changes value,
so a round trip can be compared weight for weight. The top-level names come from
diffusers' own table (`DIFFUSERS_TO_LDM_MAPPING`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip


def _rename(state: dict, old: str, new: str, out: dict, inner: dict | None = None) -> None:
    for key, value in state.items():
        if key.startswith(old + "."):
            rest = key[len(old) + 1 :]
            for a, b in (inner or {}).items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
            out[new + "." + rest] = value


def _encoder_to_ldm(state: dict, per: int, down_blocks, out: dict) -> None:
    """The UNet's down and middle blocks (a ControlNet is a copy of them)."""
    for i, block in enumerate(down_blocks):
        for j in range(len(block.resnets)):
            _rename(state, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{1 + i * per + j}.0", out, RESNET)
            if getattr(block, "attentions", None):
                _rename(state, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{1 + i * per + j}.1", out)
        if block.downsamplers:
            _rename(state, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * per}.0.op", out)
    _rename(state, "mid_block.resnets.0", "middle_block.0", out, RESNET)
    _rename(state, "mid_block.attentions.0", "middle_block.1", out)
    _rename(state, "mid_block.resnets.1", "middle_block.2", out, RESNET)


def controlnet_to_ldm(net) -> dict[str, torch.Tensor]:
    """An SD 1.x/2.x ControlNet as lllyasviel's and A1111's files hold it (`control_model.` + the encoder's names,
    `zero_convs`, `input_hint_block`, `middle_block_out`)."""
    state, out = net.state_dict(), {}
    out |= {ldm: state[d] for d, ldm in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"].items() if d in state}
    _encoder_to_ldm(state, net.config.layers_per_block + 1, net.down_blocks, out)
    for i in range(len(net.controlnet_down_blocks)):
        _rename(state, f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0", out)
    _rename(state, "controlnet_mid_block", "middle_block_out.0", out)
    for i in range(len(net.controlnet_cond_embedding.blocks)):
        _rename(state, f"controlnet_cond_embedding.blocks.{i}", f"input_hint_block.{2 * (i + 1)}", out)
    return {"control_model." + k: v for k, v in out.items()}


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    state, cfg, out = unet.state_dict(), unet.config, {}
    layers = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"] | DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    out |= {ldm: state[d] for d, ldm in layers.items() if d in state}
    per = cfg.layers_per_block + 1
    _encoder_to_ldm(state, per, unet.down_blocks, out)
    for i, block in enumerate(unet.up_blocks):
        attn = bool(getattr(block, "attentions", None))
        for j in range(len(block.resnets)):
            _rename(state, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{i * per + j}.0", out, RESNET)
            if attn:
                _rename(state, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{i * per + j}.1", out)
        if block.upsamplers:
            last = i * per + len(block.resnets) - 1
            _rename(state, f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{last}.{2 if attn else 1}.conv", out)
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    state, out = vae.state_dict(), {}
    out |= {ldm: state[d] for d, ldm in DIFFUSERS_TO_LDM_MAPPING["vae"].items() if d in state}
    shortcut = {"conv_shortcut": "nin_shortcut"}
    n = len(vae.encoder.down_blocks)
    for i in range(n):
        for j in range(len(vae.encoder.down_blocks[i].resnets)):
            _rename(state, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", out, shortcut)
        _rename(state, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", out)
    for i in range(len(vae.decoder.up_blocks)):
        for j in range(len(vae.decoder.up_blocks[i].resnets)):
            _rename(state, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", out, shortcut)
        _rename(state, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv", out)
    for part in ("encoder", "decoder"):
        for k in (1, 2):
            _rename(state, f"{part}.mid_block.resnets.{k - 1}", f"{part}.mid.block_{k}", out, shortcut)
        attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        for a, b in attn.items():
            for kind in ("weight", "bias"):
                value = state[f"{part}.mid_block.attentions.0.{a}.{kind}"]
                out[f"{part}.mid.attn_1.{b}.{kind}"] = value[..., None, None] if value.ndim == 2 else value
    return {"first_stage_model." + k: v for k, v in out.items()}


def clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder under `prefix` (e.g. `cond_stage_model.transformer.`), with the
    `text_model.` level real checkpoints have (transformers 5 no longer keeps it in CLIPTextModel)."""
    state = text_encoder.state_dict()
    return {prefix + ("" if k.startswith("text_model.") else "text_model.") + k: v
            for k, v in state.items() if "position_ids" not in k}  # fmt: skip


def open_clip_to_ldm(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder in OpenCLIP's layout (SDXL's second encoder): fused q/k/v, its own names."""
    state = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
             for k, v in text_encoder.state_dict().items()}  # fmt: skip
    out = {}
    for d, ldm in DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"].items():
        if d in state:
            out[ldm] = state[d].T.contiguous() if ldm == "text_projection" else state[d]
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}  # fmt: skip
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for a, b in names.items():
            for kind in ("weight", "bias"):
                out[dst + f"{b}.{kind}"] = state[src + f"{a}.{kind}"]
        for kind in ("weight", "bias"):
            qkv = [state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(qkv)
    return {prefix + k: v for k, v in out.items()}


def save_single_file(pipe, path: Path) -> Path:
    """`pipe` (SD 1.x or SDXL, base or refiner, inpainting or not) as one `.safetensors` file."""
    state = unet_to_ldm(pipe.unet) | vae_to_ldm(pipe.vae)
    encoder_2 = getattr(pipe, "text_encoder_2", None)
    if encoder_2 is None:
        state |= clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer.")
    elif pipe.text_encoder is not None:
        state |= clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= open_clip_to_ldm(encoder_2, "conditioner.embedders.1.model.")
    else:  # the refiner: only the big encoder, first in line
        state |= open_clip_to_ldm(encoder_2, "conditioner.embedders.0.model.")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def save_config_folder(pipe, folder: Path) -> Path:
    """The pipeline's configs and tokenizers without weights: what a shelf's `configs/<family>/` holds."""
    pipe.save_pretrained(folder)
    for weights in list(folder.rglob("*.safetensors")) + list(folder.rglob("*.bin")):
        weights.unlink()
    return folder
