"""A tiny random-weight Stable Diffusion pipeline, saved in diffusers format.

Used where a test needs a real diffusers pipeline but not a trained one
(plumbing, seeds, batching); it loads through the engine's one loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from models import tokenizer as toy_tokenizer


def text_model(tok_dir: Path) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """A tiny CLIP tokenizer (the toy vocabulary) and a 32-wide text encoder."""
    vocab = toy_tokenizer.build(tok_dir, first_merges=200, model_max_length=16)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    return tokenizer, text_encoder


def safety_checker(threshold: float) -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    """SD's safety checker, tiny. Its concept thresholds are weights: -10 flags every image, +10 none."""
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, processor


def build(out: Path, *, flag_everything: bool = False) -> Path:
    """The pipeline folder; `flag_everything` adds a safety checker that flags every image."""
    torch.manual_seed(0)
    tokenizer, text_encoder = text_model(out / "_tok")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16,
    )  # fmt: skip
    scheduler = EulerAncestralDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )
    checker, processor = safety_checker(-10.0) if flag_everything else (None, None)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=checker, feature_extractor=processor, requires_safety_checker=False,
    )  # fmt: skip
    target = out / ("tiny-sd-checked" if flag_everything else "tiny-sd")
    pipe.save_pretrained(target)
    return target


def build_upscaler(out: Path) -> Path:
    """A tiny random-weight Stable Diffusion x4 upscaler pipeline folder (diffusers' own test shapes)."""
    torch.manual_seed(0)
    tokenizer, text_encoder = text_model(out / "_tok_up")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=32, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
        num_class_embeds=100,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    )  # fmt: skip
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=350,
    )  # fmt: skip
    target = out / "tiny-x4-upscaler"
    pipe.save_pretrained(target)
    return target


def _xl_unet(*, in_channels: int, refiner: bool) -> UNet2DConditionModel:
    # The extra conditioning: 6 (base) or 5 (refiner: with an aesthetic score) time ids of 8, plus the pooled
    # text. Text: both encoders side by side (32 + 48 wide), the refiner only the big one. The widths differ,
    # as in real SDXL: diffusers tells the two encoders of a single file apart by width.
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=(5 if refiner else 6) * 8 + 32,
        cross_attention_dim=48 if refiner else 32 + 48, norm_num_groups=8,
    )  # fmt: skip


def _vae(latent_channels: int = 4, **flow: float) -> AutoencoderKL:
    """`flow`: SD3's and FLUX's VAEs (16 latent channels) also shift their latents (shift_factor, scaling_factor)."""
    return AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels, norm_num_groups=8, sample_size=16,
        **flow,
    )  # fmt: skip


TOY_WORDS = ["a", "red", "green", "blue", "yellow", "purple", "white", "circle", "square", "triangle", "star", "on",
             "background"]  # fmt: skip


def t5_tokenizer(words: list[str] = TOY_WORDS):
    """A T5 tokenizer (SentencePiece unigram: whole words, else letters) built in memory, as the hub's
    tiny-random-t5 cannot be fetched here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    letters = sorted(set("".join(words)) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])  # fmt: skip
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def _t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=64, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0))  # fmt: skip


def flow_pipeline(out: Path, family: str):
    """A tiny random-weight SD3 or FLUX pipeline (transformer, flow matching, a T5 encoder)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, clip_l = text_model(out / f"_tok_{family}")
    t5_tok = t5_tokenizer()
    if family == "flux":
        # Latents of 16 channels are packed 2x2 into tokens of 64; rotary axes add up to the head width.
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])  # fmt: skip
        return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                            vae=_vae(16, shift_factor=0.1159, scaling_factor=0.3611), text_encoder=clip_l,
                            tokenizer=tokenizer, text_encoder_2=_t5(t5_tok, 32), tokenizer_2=t5_tok,
                            transformer=transformer)  # fmt: skip
    # SD3: CLIP-L and CLIP-G side by side (32 + 32 wide, their pooled outputs too), padded to T5's width (64).
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    encoders = [CLIPTextModelWithProjection(config) for _ in range(2)]
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=64, pooled_projection_dim=64, out_channels=16)  # fmt: skip
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035),
                                    text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
                                    tokenizer_2=tokenizer, text_encoder_3=_t5(t5_tok, 64), tokenizer_3=t5_tok,
                                    transformer=transformer)  # fmt: skip


def family_pipeline(out: Path, family: str, *, inpainting: bool = False):
    """A tiny random-weight pipeline object of `family` ("sd1", "sdxl", "sdxl-refiner", "sd3", "flux"),
    not yet saved."""
    if family in ("sd3", "flux"):
        return flow_pipeline(out, family)
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    in_channels = 9 if inpainting else 4
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")  # fmt: skip
    if family == "sd1":
        tokenizer, text_encoder = text_model(out / f"_tok_{family}")
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=8,
        )  # fmt: skip
        cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
        return cls(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    tokenizer, _ = text_model(out / f"_tok_{family}")
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    big = CLIPTextModelWithProjection(config)
    if family == "sdxl-refiner":
        return StableDiffusionXLImg2ImgPipeline(
            vae=_vae(), text_encoder=None, tokenizer=None, text_encoder_2=big, tokenizer_2=tokenizer,
            unet=_xl_unet(in_channels=in_channels, refiner=True), scheduler=scheduler,
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        )  # fmt: skip
    _, small = text_model(out / f"_tok_{family}_l")
    cls = StableDiffusionXLInpaintPipeline if inpainting else StableDiffusionXLPipeline
    return cls(vae=_vae(), text_encoder=small, tokenizer=tokenizer, text_encoder_2=big, tokenizer_2=tokenizer,
               unet=_xl_unet(in_channels=in_channels, refiner=False), scheduler=scheduler)  # fmt: skip
