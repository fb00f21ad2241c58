"""Do the semantic tokens carry the style and the lead instrument? A linear probe on a bag of tokens.

The DPD hears nothing but the semantic tokens (paper §3.3), so music made from a clip's own tokens can only be of the
clip's style and instrument as far as the tokens say them. This script measures how far: the attribute classifiers of
`melody eval music` (`melody.eval.attributes`, the same labels, train clips and logistic regression), fit on each
clip's token histogram (the share of each code over the clip, `codebook_size` columns) instead of musicnn's
embedding, and scored on the real held-out clips. Beside it, the same probe on musicnn's embedding of the same clips
(what `melody eval music` reports as "real"). A histogram drops the order of the tokens, which the DPD does see:
what it scores is what the tokens say at least, linearly.

And the tokens the semantic LM writes for each held-out clip's caption (`MeLoDy.semantic_tokens`, seeded as
`melody eval music` seeds clip i, the LM's own sampling settings), scored by the probe fit on real clips' tokens: do
the LM's tokens say the caption's style and instrument the way real tokens of such music do? Beside the DPD's music
from real tokens (`melody eval music --source tokens`) this splits what the caption loses between the LM and the DPD.

With `--audio-condition`, also the tokens the LM writes for each held-out clip conditioned on the clip's own MuLan
*audio* tokens (the clip as a music prompt, `MeLoDy.semantic_tokens(prompt_audio=)`; the same seeds, no tempo token):
beside the caption's row, this splits the LM's share between MuLan's text side (the caption's embedding and tokens)
and the LM itself.
With `--mulan`, the same probe on what the LM is conditioned by: each clip's MuLan audio embedding, and its MuLan
tokens (their RVQ code vectors summed, the embedding as the tokens keep it): does the condition itself say the style
and instrument?

    .venv/bin/python benchmarks/token_probe.py --data data/corpus --threads 2

Writes `benchmarks/results/ladder/token_probe.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_device_args, load_average, machine  # noqa: E402
from melody.ears.musicnn import MusicnnTagger  # noqa: E402
from melody.eval.attributes import TRAIN_SPLIT, fit_attribute_classifiers, score_attributes, spread_clips  # noqa: E402
from melody.eval.music import read_clips  # noqa: E402
from melody.eval.quality import musicnn_outputs  # noqa: E402
from melody.io import write_json_atomic  # noqa: E402
from melody.pipeline import MeLoDy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = "semantic tokens (histogram)"
LM_TOKENS = "the semantic LM's tokens from the caption (histogram)"
LM_TOKENS_FROM_AUDIO = "the semantic LM's tokens from the clip's own MuLan audio tokens (histogram)"
MULAN_EMBEDDING = "MuLan audio embedding"
MULAN_TOKENS = "MuLan audio tokens (their code vectors summed)"


def token_histogram(tokens: torch.Tensor, codebook_size: int) -> np.ndarray:
    """The share of each code among a clip's tokens `(t,)`: `(codebook_size,)`, summing to 1."""
    counts = torch.bincount(tokens, minlength=codebook_size).double()
    return (counts / counts.sum()).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parents[1] / "melody" / "bundled")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train-clips", type=int, default=400)
    parser.add_argument("--limit", type=int, default=None, help="Held-out clips (default: the whole test split).")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0, help="The LM's clip i is seeded seed + i, as in melody eval music.")
    parser.add_argument("--temperature", type=float, action="append", default=None,
                        help="The LM's sampling temperature (repeatable: one row each; default: the bundle's).")
    parser.add_argument("--lm-guidance", type=float, action="append", default=None,
                        help="The LM's classifier-free guidance (repeatable; default: the bundle's).")
    parser.add_argument("--top-k", type=int, default=None, help="The LM's top-k (default: the bundle's).")
    parser.add_argument("--audio-condition", action="store_true",
                        help="Also the LM's tokens conditioned on each clip's own MuLan audio tokens.")
    parser.add_argument("--mulan", action="store_true", help="Also probe the clips' MuLan audio embeddings and tokens.")
    parser.add_argument("--out", type=Path, default=RESULTS / "ladder" / "token_probe.json")
    args = parser.parse_args()
    args.temperature, args.lm_guidance = args.temperature or [None], args.lm_guidance or [None]
    torch.set_num_threads(args.threads)
    load = load_average()
    model = MeLoDy.from_pretrained(args.bundle)
    rate, codes = model.vae.cfg.sample_rate, model.tokenizer.quantizer.codebook_size
    tagger = MusicnnTagger.load()

    def features(clips: list[np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            tokens = [model.tokenizer.tokens(torch.from_numpy(c)[None])[0] for c in clips]
        out = {TOKENS: np.stack([token_histogram(t, codes) for t in tokens]),
               "musicnn embedding": musicnn_outputs(clips, rate, tagger).embeddings}
        if args.mulan:
            with torch.no_grad():
                embedding = torch.cat([model.mulan.embed_audio(torch.from_numpy(c)[None]) for c in clips])
                levels = model.mulan.tokens(embedding)  # (n, L)
            out[MULAN_EMBEDDING] = embedding.numpy()
            # the tokens as the sum of their code vectors: all they say, in the embedding's own space (a one-hot per
            # level asks a linear probe on a few hundred clips to learn each code anew)
            out[MULAN_TOKENS] = model.mulan.rvq.decode(levels).numpy()
        return out

    train = list(spread_clips(args.data, TRAIN_SPLIT, args.seconds, rate, args.train_clips))
    test = read_clips(args.data, "test", args.seconds, rate, args.limit)
    train_features, test_features = features([c for c, _ in train]), features(test.audio)
    written = {}
    for temperature in args.temperature:
        for lm_guidance in args.lm_guidance:
            tokens = torch.cat([model.semantic_tokens([caption], args.seconds, temperature, args.top_k, lm_guidance,
                                                      seed=args.seed + i)
                                for i, caption in enumerate(test.captions)])  # clip i as `melody eval music` seeds it
            label = LM_TOKENS + "".join(f", {k} {v:g}" for k, v in (("temperature", temperature), ("guidance", lm_guidance))
                                        if v is not None)
            written[label] = np.stack([token_histogram(t, codes) for t in tokens])
    if args.audio_condition:  # each clip as a music prompt, seeded as its caption's row
        tokens = torch.cat([model.semantic_tokens(None, args.seconds, None, args.top_k, None, seed=args.seed + i,
                                                  prompt_audio=torch.from_numpy(clip)[None])
                            for i, clip in enumerate(test.audio)])
        written[LM_TOKENS_FROM_AUDIO] = np.stack([token_histogram(t, codes) for t in tokens])
    rows = {}
    for name in train_features:
        classifiers = fit_attribute_classifiers(train_features[name], [m for _, m in train])
        probed = {name: test_features[name]} | (written if name == TOKENS else {})
        for row, held_out in probed.items():
            scores = score_attributes(classifiers, test_features[name], held_out, test.metas, list(range(len(test.metas))))
            rows[row] = {a: {"accuracy": s.generated.accuracy, "clips": s.generated.clips, "chance": s.chance,
                             "majority": s.real.majority} for a, s in scores.items()}
            print(row, {a: r["accuracy"] for a, r in rows[row].items()}, flush=True)
    write_json_atomic(args.out, {"bundle": str(args.bundle), "codebook_size": codes, "train_clips": len(train),
                                 "test_clips": len(test.keys), "seconds": args.seconds, "seed": args.seed, "top_k": args.top_k, "probes": rows,
                                 **machine(args.device, args.threads, load)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
