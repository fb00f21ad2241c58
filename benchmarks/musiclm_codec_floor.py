"""The MusicLM-style baseline's codec floor: how close decode(encode(x)) comes to x, beside the VAE's own.

The baseline's acoustic tokens come from the bundled VAE's latents, made 50 Hz and residual-quantised
(`melody/baselines/codec.py`). This script measures, on whole held-out clips spread over the split (as the
codebooks are fitted on training clips spread over theirs: `melody.train.musiclm.spread_audio`), the mel distance
(`melody.eval.metrics.mel_distance`, 80-bin log-mel L1) to the original of:
- the VAE's reconstruction from its posterior mean (what no codec built on it can beat);
- each mapping without quantisation ("group" is lossless by construction, "interpolate" is not);
- each mapping and codebook size with RVQ codebooks fitted by k-means on `--fit-clips` training clips,
  decoded from the first k levels (k = 4: the coarse tokens alone; k = 12: all), for the k in `OPTIONS`.
Writes `benchmarks/results/musiclm_codec.json`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/musiclm_codec_floor.py --data /tmp/corpus
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melody.baselines.codec import CodecConfig, LatentCodec, vae_latents  # noqa: E402
from melody.bundled import bundled  # noqa: E402
from melody.checkpoint import load_model_and_config  # noqa: E402
from melody.eval.metrics import mel_distance  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.train.musiclm import spread_audio  # noqa: E402
from melody.vae import VAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "musiclm_codec.json"
OPTIONS = (("group", 1024, (1, 2, 4, 8, 12)), ("group", 256, (4, 12)), ("interpolate", 1024, (12,)))  # mapping, K, levels


@torch.no_grad()
def clips(vae: VAE, root: Path, split: str, limit: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(audio `(1, c, n)`, latents `(1, l, d)`) of `limit` whole clips spread over `split` (every source)."""
    audio = list(spread_audio(root, split, limit, vae.cfg.sample_rate, vae.cfg.channels))
    return audio, [vae_latents(vae, x) for x in audio]


def mean_distance(vae: VAE, audio: list[torch.Tensor], latents: list[torch.Tensor]) -> float:
    rate = vae.cfg.sample_rate
    return sum(float(mel_distance(vae.decode(z.transpose(1, 2), x.shape[-1]), x, rate)[0])
               for x, z in zip(audio, latents, strict=True)) / len(audio)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--fit-clips", type=int, default=CodecConfig.fit_clips)
    parser.add_argument("--eval-clips", type=int, default=26)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    vae, _ = load_model_and_config(bundled("vae"), "vae", "vae", lambda c: VAE(c.vae))
    clock = time.perf_counter()
    _, train = clips(vae, args.data, "train", args.fit_clips)
    audio, held_out = clips(vae, args.data, args.split, args.eval_clips)
    print("clips read", flush=True)
    result = {"data": str(args.data), "split": args.split, "eval_clips": len(audio), "fit_clips": len(train),
              "fit_frames_50hz": None, "vae_mel_distance": mean_distance(vae, audio, held_out),
              "encode_seconds": round(time.perf_counter() - clock, 1), "options": []}
    for mapping, size, levels in OPTIONS:
        codec = LatentCodec(CodecConfig(mapping=mapping, codebook_size=size), vae.cfg.latent_dim, vae.latent_rate)
        unquantised = [codec.from_frames(codec.to_frames(z), z.shape[1]) for z in held_out]
        clock = time.perf_counter()
        codec.fit(train, seed=0)
        fit_s = time.perf_counter() - clock
        result["fit_frames_50hz"] = sum(codec.frames(z.shape[1]) for z in train)
        by_levels = {}
        for k in levels:
            decoded = [codec.decode(codec.encode(z, k), z.shape[1]) for z in held_out]
            by_levels[k] = round(mean_distance(vae, audio, decoded), 4)
            print(mapping, size, k, by_levels[k], flush=True)
        result["options"].append({"mapping": mapping, "codebook_size": size, "frame_dim": codec.frame_dim,
                                  "unquantised_mel_distance": round(mean_distance(vae, audio, unquantised), 4),
                                  "mel_distance_by_levels": by_levels, "fit_seconds": round(fit_s, 1)})
    write_json_atomic(RESULTS, result)
    print(RESULTS)


if __name__ == "__main__":
    main()
