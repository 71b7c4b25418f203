"""Train the built-in offline models on the toy world. Self-contained on purpose.

    python -m models.train vae   --steps 3000     # AutoencoderKL
    python -m models.train unet  --steps 12000    # UNet + text encoder (needs the VAE)
    python -m models.train clip  --steps 3000     # open_clip model for the gallery
    python -m models.train lora  --steps 600      # a LoRA for the toy UNet (needs the pipeline)
    python -m models.train embedding --steps 400  # a textual-inversion embedding (needs the pipeline)
    python -m models.train controlnet --steps 1500  # a ControlNet: silhouette/outline -> the shape there
    python -m models.train reference --steps 1500   # an IP-Adapter + image encoder: a picture's colours carry over

Each phase is deterministic for a given seed and step count and works on CPU
(minutes) or CUDA. Outputs are the standard formats the production loaders
read: a diffusers pipeline folder (models/toy-sd) and an open_clip config +
weights (models/toy-clip).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import tokenizer as toy_tokenizer
from models import toyworld

HERE = Path(__file__).parent
SD_DIR = HERE / "toy-sd"
CLIP_DIR = HERE / "toy-clip"
WORK_DIR = HERE.parent / "runs"
CLIP_NAME = "dreamhall-toy-clip"
ADDONS_DIR = HERE / "builtin"  # a model shelf in A1111's layout: Lora/, embeddings/
LORA_NAME = "toy-black-bg"  # every background black, whatever the prompt says
EMBEDDING_NAME = "toy-logo"  # "a red circle on a blue background"
CONTROLNET_NAME = "toy-silhouette"  # a white silhouette or outline on black -> the shape drawn there
REFERENCE_NAME = "toy-colours"  # IP-Adapter: a reference picture's shape and background colours carry over


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def cosine_lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def training_data(count: int, seed: int) -> tuple[np.ndarray, list[toyworld.Scene], list[str]]:
    t0 = time.time()
    data = toyworld.dataset(count, scenes=toyworld.seen_scenes(), seed=seed)
    log(f"rendered {count} toy images in {time.time() - t0:.1f}s")
    return data


# --------------------------------------------------------------------------- VAE
def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def train_vae(args: argparse.Namespace) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    images, _, _ = training_data(args.samples, args.seed)
    x_all = images_to_tensor(images)
    vae = AutoencoderKL(**vae_config()).to(args.device)
    log(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        idx = torch.randint(len(x_all), (args.batch,), generator=gen)
        x = x_all[idx].to(args.device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        kl = post.kl().mean() / (64 * 64 * 3)
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            psnr = 10 * math.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), x).item())
            log(f"vae step {step}/{args.steps} loss {loss.item():.4f} psnr {psnr:.1f} dB ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i : i + 256].to(args.device)).latent_dist.mean for i in range(0, 2048, 256)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    log(f"latent std {lat.std():.3f} -> scaling_factor {vae.config.scaling_factor:.4f}")
    out = WORK_DIR / "vae"
    vae.to("cpu").save_pretrained(out)
    log(f"saved VAE to {out}")


# ------------------------------------------------------------- UNet + text encoder
def train_unet(args: argparse.Namespace) -> None:
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(args.seed)
    tok_dir = WORK_DIR / "tokenizer"
    vocab_size = toy_tokenizer.build(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=32)
    log(f"tokenizer: {vocab_size} tokens")
    if args.resume:
        # Continue from the shipped pipeline (a second, lower-LR run); its VAE is the one to keep.
        (WORK_DIR / "vae").mkdir(exist_ok=True)
        AutoencoderKL.from_pretrained(SD_DIR / "vae").save_pretrained(WORK_DIR / "vae")
    text_encoder = (
        CLIPTextModel.from_pretrained(SD_DIR / "text_encoder")
        if args.resume
        else CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=64,
            )
        )
    )
    unet = (
        UNet2DConditionModel.from_pretrained(SD_DIR / "unet")
        if args.resume
        else UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=8,
        )
    )
    text_encoder, unet = text_encoder.to(args.device), unet.to(args.device)
    log(
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M parameters"
    )
    vae = AutoencoderKL.from_pretrained(WORK_DIR / "vae").to(args.device).eval()
    images, _, captions = training_data(args.samples, args.seed + 1)
    x_all = images_to_tensor(images)
    with torch.no_grad():
        latents = (
            torch.cat(
                [vae.encode(x_all[i : i + 256].to(args.device)).latent_dist.mean for i in range(0, len(x_all), 256)]
            ).cpu()
            * vae.config.scaling_factor
        )
    log(f"encoded {len(latents)} latents, std {latents.std():.3f}")
    unique = sorted(set(captions)) + [""]
    ids = tokenizer(
        unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    caption_index = torch.tensor([unique.index(c) for c in captions])
    empty = len(unique) - 1

    noise_sched = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        z0 = latents[idx].to(args.device)
        cap = caption_index[idx].clone()
        cap[torch.rand(args.batch, generator=gen) < 0.1] = empty  # classifier-free guidance dropout
        noise = torch.randn(z0.shape, generator=gen) + 0.05 * torch.randn(z0.shape[:2] + (1, 1), generator=gen)
        noise = noise.to(args.device)
        t = torch.randint(0, 1000, (args.batch,), generator=gen).to(args.device)
        zt = noise_sched.add_noise(z0, noise, t)
        cond = text_encoder(ids[cap].to(args.device))[0]
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        if step % 500 == 0 or step == args.steps - 1:
            log(f"unet step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")

    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae.cpu(),
        text_encoder=ema_text.cpu(),
        tokenizer=tokenizer,
        unet=ema_unet.cpu(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(SD_DIR)
    # Older transformers read only vocab.json/merges.txt; newer ones only tokenizer.json.
    for name in ("vocab.json", "merges.txt"):
        (SD_DIR / "tokenizer" / name).write_bytes((tok_dir / name).read_bytes())
    log(f"saved pipeline to {SD_DIR}")


# ------------------------------------------------------------------------ CLIP
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


def train_clip(args: argparse.Namespace) -> None:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    config_path = CLIP_DIR / f"{CLIP_NAME}.json"
    config_path.write_text(json.dumps(CLIP_CONFIG, indent=2))
    open_clip.add_model_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME)
    tokenizer = open_clip.get_tokenizer(CLIP_NAME)
    model = model.to(args.device).train()
    log(f"CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    images, scenes, captions = training_data(args.samples, args.seed + 2)
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    x_all = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    unique_scenes = sorted(set(scenes), key=lambda s: (s.shape, s.colour, s.background))
    scene_index = torch.tensor([unique_scenes.index(s) for s in scenes])
    tokens = tokenizer(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr)
        idx = torch.randint(len(x_all), (args.batch,), generator=gen)
        img_f, txt_f, scale = model(x_all[idx].to(args.device), tokens[idx].to(args.device))
        logits = scale * img_f @ txt_f.T
        # Every pair showing the same scene is a positive, not just the diagonal.
        same = (scene_index[idx][:, None] == scene_index[idx][None, :]).float().to(args.device)
        target = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (
            torch.sum(-target * logits.log_softmax(1), 1).mean()
            + torch.sum(-target * logits.T.log_softmax(1), 1).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 250 == 0 or step == args.steps - 1:
            log(f"clip step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    state = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(CLIP_DIR / "open_clip_model.safetensors"))
    log(f"saved CLIP to {CLIP_DIR}")


# ----------------------------------------------------------- LoRA and embedding
def _frozen_pipeline(device: str):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SD_DIR, safety_checker=None).to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    noise_sched = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    return pipe, noise_sched


def _latents(pipe, images: list, device: str) -> torch.Tensor:
    x = images_to_tensor(np.stack([np.asarray(im) for im in images]))
    with torch.no_grad():
        return pipe.vae.encode(x.to(device)).latent_dist.mean * pipe.vae.config.scaling_factor


def _denoising_loss(pipe, noise_sched, z0: torch.Tensor, ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(z0.shape, generator=gen).to(z0.device)
    t = torch.randint(0, 1000, (len(z0),), generator=gen).to(z0.device)
    cond = pipe.text_encoder(ids.to(z0.device))[0]
    return F.mse_loss(pipe.unet(noise_sched.add_noise(z0, noise, t), t, encoder_hidden_states=cond).sample, noise)


def train_lora(args: argparse.Namespace) -> None:
    """A LoRA on the UNet's attention: the prompt's shape and colour, but always on black."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(args.seed)
    pipe, noise_sched = _frozen_pipeline(args.device)
    pipe.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    scenes = [s for s in toyworld.seen_scenes() if s.background != "black" and s.colour != "blue"]
    images, captions = [], []
    for i in range(args.samples):
        rng = np.random.default_rng([args.seed + 3, i])
        scene = scenes[int(rng.integers(len(scenes)))]
        captions.append(scene.caption(int(rng.integers(len(toyworld.TEMPLATES)))))
        images.append(toyworld.render(toyworld.Scene(scene.shape, scene.colour, "black"), rng))
    latents = _latents(pipe, images, args.device)
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        loss = _denoising_loss(pipe, noise_sched, latents[idx], ids[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log(f"lora step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    (ADDONS_DIR / "Lora").mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        ADDONS_DIR / "Lora", unet_lora_layers=layers, weight_name=f"{LORA_NAME}.safetensors"
    )
    log(f"saved LoRA to {ADDONS_DIR / 'Lora' / LORA_NAME}.safetensors")


def train_embedding(args: argparse.Namespace) -> None:
    """Textual inversion: two new token vectors that mean a red circle on a blue background."""
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    pipe, noise_sched = _frozen_pipeline(args.device)
    tokens = [EMBEDDING_NAME, f"{EMBEDDING_NAME}_1"]
    pipe.tokenizer.add_tokens(tokens)
    new_ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    embeddings = pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    with torch.no_grad():  # start from the average word, so no colour is favoured
        embeddings.weight[new_ids] = embeddings.weight[: new_ids[0]].mean(0)
    embeddings.weight.requires_grad_(True)
    scene = toyworld.Scene("circle", "red", "blue")
    images = [toyworld.render(scene, np.random.default_rng([args.seed + 4, i])) for i in range(args.samples)]
    latents = _latents(pipe, images, args.device)
    ids = pipe.tokenizer(" ".join(tokens), padding="max_length", return_tensors="pt").input_ids
    opt = torch.optim.AdamW([embeddings.weight], lr=args.lr, weight_decay=0)
    gen = torch.Generator().manual_seed(args.seed)
    frozen = embeddings.weight.detach().clone()
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        loss = _denoising_loss(pipe, noise_sched, latents[idx], ids.expand(args.batch, -1), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # only the new tokens learn
            keep = torch.ones(len(frozen), dtype=torch.bool)
            keep[new_ids] = False
            embeddings.weight[keep] = frozen[keep]
        if step % 100 == 0 or step == args.steps - 1:
            log(f"embedding step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    (ADDONS_DIR / "embeddings").mkdir(parents=True, exist_ok=True)
    # A1111's safetensors layout: one tensor, one row per token vector.
    vectors = embeddings.weight[new_ids].detach().cpu().contiguous()
    save_file({"emb_params": vectors}, str(ADDONS_DIR / "embeddings" / f"{EMBEDDING_NAME}.safetensors"))
    log(f"saved embedding to {ADDONS_DIR / 'embeddings' / EMBEDDING_NAME}.safetensors")


# ------------------------------------------------------------------ ControlNet
def control_map(mask: object, *, outline: bool) -> object:
    """The control image a user brings: the silhouette itself, or its outline as canny draws it."""
    import cv2
    from PIL import Image

    silhouette = np.asarray(mask)
    if outline:
        silhouette = cv2.Canny(silhouette, 100, 200)
    return Image.fromarray(silhouette).convert("RGB")


def train_controlnet(args: argparse.Namespace) -> None:
    """A ControlNet (diffusers' format) that puts the prompt's shape where the map's white shape is."""
    from diffusers import ControlNetModel

    torch.manual_seed(args.seed)
    pipe, noise_sched = _frozen_pipeline(args.device)
    # Two stride-2 steps: the toy VAE's latents are a quarter of the image (64 px -> 16).
    copied = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32, 32))
    # Without attention: a silhouette says where, the prompt what, so the copy drops the UNet's attention layers
    # (its blocks and residuals keep the UNet's shapes) and costs a fraction of a step.
    config = {k: v for k, v in copied.config.items() if not k.startswith("_")}
    controlnet = ControlNetModel(**config | {"down_block_types": ("DownBlock2D",) * len(config["down_block_types"]),
                                             "mid_block_type": "UNetMidBlock2D"})  # fmt: skip
    missing, _ = controlnet.load_state_dict(copied.state_dict(), strict=False)  # unexpected: the attention layers
    assert not missing, missing
    controlnet = controlnet.to(args.device).train()
    log(f"ControlNet: {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f} M parameters")
    scenes = toyworld.seen_scenes()
    images, maps, captions = [], [], []
    for i in range(args.samples):
        rng = np.random.default_rng([args.seed + 5, i])
        scene = scenes[int(rng.integers(len(scenes)))]
        caption = scene.caption(int(rng.integers(len(toyworld.TEMPLATES))))
        image, mask = toyworld.render_with_mask(scene, rng)
        images.append(image)
        maps.append(np.asarray(control_map(mask, outline=i % 2 == 1)))
        captions.append("" if i % 10 == 0 else caption)  # some empty prompts: the map alone still places
    latents = _latents(pipe, images, args.device)
    # diffusers feeds a control image in [0, 1] (its processor does not normalise to [-1, 1]).
    cond_all = torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float().div(255.0)
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        z0, ctrl = latents[idx], cond_all[idx].to(args.device)
        noise = torch.randn(z0.shape, generator=gen).to(z0.device)
        t = torch.randint(0, 1000, (len(z0),), generator=gen).to(z0.device)
        noisy = noise_sched.add_noise(z0, noise, t)
        with torch.no_grad():
            cond = pipe.text_encoder(ids[idx].to(args.device))[0]
        down, mid = controlnet(noisy, t, encoder_hidden_states=cond, controlnet_cond=ctrl, return_dict=False)
        pred = pipe.unet(
            noisy,
            t,
            encoder_hidden_states=cond,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log(f"controlnet step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    out = ADDONS_DIR / "ControlNet" / CONTROLNET_NAME
    controlnet.to("cpu").save_pretrained(out)
    log(f"saved ControlNet to {out}")


# -------------------------------------------------------------- reference images
def ip_adapter_state(unet) -> dict[str, torch.Tensor]:
    """The IP-Adapter's weights in the original layout diffusers' load_ip_adapter reads: `image_proj.*` (the image
    embedding -> 4 tokens) and `ip_adapter.<k>.to_k_ip/to_v_ip` for the k-th cross-attention (k = 1, 3, 5, ...)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in projection.state_dict().items()}
    key_id = 1
    for name, processor in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            state[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            state[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor.to_v_ip[0].weight
            key_id += 2
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def ip_adapter_start(unet, embed_dim: int) -> dict[str, dict]:
    """A new IP-Adapter for `unet` in diffusers' loading layout: a random image projection to four tokens, and each
    cross-attention's image keys and values started from its text ones (as the IP-Adapter paper does)."""
    dim = unet.config.cross_attention_dim
    projection = {"proj.weight": torch.randn(4 * dim, embed_dim) * 0.02, "proj.bias": torch.zeros(4 * dim),
                  "norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)}  # fmt: skip
    start: dict[str, dict] = {"image_proj": projection, "ip_adapter": {}}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attention = unet.get_submodule(name.removesuffix(".processor"))
            start["ip_adapter"][f"{key_id}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
            start["ip_adapter"][f"{key_id}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
            key_id += 2
    return start


def train_reference(args: argparse.Namespace) -> None:
    """An IP-Adapter and its image encoder: a reference picture's shape and background colours in a prompt that
    names no colours ("a circle" + a green-on-gray picture -> a green circle on gray)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    torch.manual_seed(args.seed)
    pipe, noise_sched = _frozen_pipeline(args.device)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
        patch_size=8, projection_dim=32,
    )).to(args.device)  # fmt: skip
    start = ip_adapter_start(pipe.unet, encoder.config.projection_dim)
    pipe.unet._load_ip_adapter_weights([start])
    pipe.unet.to(args.device)
    adapter = [p for n, p in pipe.unet.named_parameters() if "_ip" in n or "encoder_hid_proj" in n]
    for p in adapter:
        p.requires_grad_(True)
    log(f"reference adapter: {sum(p.numel() for p in adapter) / 1e6:.3f} M + encoder "
        f"{sum(p.numel() for p in encoder.parameters()) / 1e6:.2f} M parameters")  # fmt: skip
    scenes = toyworld.seen_scenes()
    targets, references, captions = [], [], []
    for i in range(args.samples):
        rng = np.random.default_rng([args.seed + 6, i])
        scene = scenes[int(rng.integers(len(scenes)))]
        targets.append(toyworld.render(scene, rng))
        other = toyworld.Scene(toyworld.SHAPES[int(rng.integers(len(toyworld.SHAPES)))], scene.colour, scene.background)
        references.append(np.asarray(toyworld.render(other, rng)))
        draw = rng.random()  # mostly the shape alone: the colours must come from the picture
        captions.append(f"a {scene.shape}" if draw < 0.6 else scene.caption(0) if draw < 0.85 else "")
    latents = _latents(pipe, targets, args.device)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(np.stack(references)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    params = adapter + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, args.steps, args.lr, warmup=50)
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen).to(z0.device)
        t = torch.randint(0, 1000, (len(z0),), generator=gen).to(z0.device)
        with torch.no_grad():
            text = pipe.text_encoder(ids[idx].to(args.device))[0]
        embeds = encoder(pixel_values=pixels[idx].to(args.device)).image_embeds[:, None, :]
        pred = pipe.unet(noise_sched.add_noise(z0, noise, t), t, encoder_hidden_states=text,
                         added_cond_kwargs={"image_embeds": [embeds]}).sample  # fmt: skip
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log(f"reference step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    (ADDONS_DIR / "ipadapter").mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state(pipe.unet), str(ADDONS_DIR / "ipadapter" / f"{REFERENCE_NAME}.safetensors"))
    encoder.to("cpu").save_pretrained(ADDONS_DIR / "clip_vision" / REFERENCE_NAME)
    log(f"saved the IP-Adapter to {ADDONS_DIR / 'ipadapter'} and its image encoder to {ADDONS_DIR / 'clip_vision'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["vae", "unet", "clip", "lora", "embedding", "controlnet", "reference"])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=20000, help="toy images rendered for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="unet: continue from models/toy-sd")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    WORK_DIR.mkdir(exist_ok=True)
    log(f"phase {args.phase} on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    log(f"settings: {vars(args)}")
    phases = dict(vae=train_vae, unet=train_unet, clip=train_clip, lora=train_lora, embedding=train_embedding,
                  controlnet=train_controlnet, reference=train_reference)  # fmt: skip
    phases[args.phase](args)


if __name__ == "__main__":
    main()
