"""The tiny random-weight text-to-video pipeline, built offline (tests, laptops, CI).

It is saved with `save_pretrained` and loaded back with `DiffusionPipeline.from_pretrained`,
exactly as a real model directory or hub id is, so the code the tests exercise is the code a
GPU worker runs.
"""

import json
import tempfile
from pathlib import Path

from shared.media.pipeline import quiet_progress_bars

# The tiny model, sized by measuring 1920x1080 renders on a 2-core CPU (bench/tier_cost.py).
# Most of the cost is in layers at the full latent size (UNet3D's temporal transformer_in, the
# VAE decoder's top level): top levels 4 channels wide instead of 8 halved it. Spatial attention
# sits only in the lowest of four levels (30x17 tokens at 1080p); with three levels (60x34
# tokens) the attention blocks took five times as long, and one level higher still is far worse.
TINY_INIT_SEED = 0
TINY_UNET_CHANNELS = (4, 8, 16, 16)
TINY_VAE_CHANNELS = (4, 4, 8, 8)  # four levels: the usual 8x latent downsampling
TINY_NORM_GROUPS = 4
TINY_TEXT_WIDTH = 32
TOKENIZER_MAX_LENGTH = 77  # CLIP's context length; the text encoder's position table matches it
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space, ...) are moved to
    code points from 256 upwards, so every byte of any prompt has a vocabulary entry.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def _write_tokenizer_files(directory: Path) -> None:
    """A CLIP vocabulary of single bytes (alone and word-final) and an empty merges list.

    Enough for any prompt to tokenize (one token per byte); a tiny random model has nothing to
    gain from real word pieces.
    """
    letters = _byte_alphabet()
    tokens = [*letters, *(letter + "</w>" for letter in letters), BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build_tiny_model(directory: Path) -> Path:
    """Build the tiny random-weight text-to-video pipeline offline and save it into `directory`.

    Every component starts from the same fixed seed, so building twice gives byte-identical
    weights. Returns the directory, loadable with `load_pipeline(str(directory), device)`.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    quiet_progress_bars()
    directory = Path(directory)

    # 1. tokenizer, from files written here (nothing is downloaded)
    with tempfile.TemporaryDirectory(prefix="tierflow-tokenizer-") as scratch:
        _write_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch, model_max_length=TOKENIZER_MAX_LENGTH)

    # 2. text encoder; its special token ids must be the tokenizer's, or it pools the wrong token
    torch.manual_seed(TINY_INIT_SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_TEXT_WIDTH, intermediate_size=2 * TINY_TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))

    # 3. denoiser: cross-attention only in the last (lowest-resolution) level and the mid block
    torch.manual_seed(TINY_INIT_SEED)
    levels = len(TINY_UNET_CHANNELS)
    unet = UNet3DConditionModel(
        sample_size=32,
        block_out_channels=TINY_UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("DownBlock3D",) * (levels - 1) + ("CrossAttnDownBlock3D",),
        up_block_types=("CrossAttnUpBlock3D",) + ("UpBlock3D",) * (levels - 1),
        norm_num_groups=TINY_NORM_GROUPS,
        cross_attention_dim=TINY_TEXT_WIDTH,
        # UNet3D reads this as the number of heads (a historical misnomer); it also sizes the
        # temporal transformer at the full latent size (8 heads x 2), which dominates the cost.
        attention_head_dim=2,
    )

    # 4. VAE without mid-block attention: that attention runs at the full latent size
    # (240x135 tokens at 1080p), the most expensive place to put it.
    torch.manual_seed(TINY_INIT_SEED)
    vae = AutoencoderKL(
        block_out_channels=TINY_VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(TINY_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(TINY_VAE_CHANNELS),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=TINY_NORM_GROUPS,
        mid_block_add_attention=False,
    )

    # 5. scheduler: deterministic DDIM with Stable Diffusion's noise schedule
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )

    pipeline = TextToVideoSDPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
    )
    pipeline.save_pretrained(directory)
    return directory
