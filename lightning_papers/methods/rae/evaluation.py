"""Score stage-2 samples: decode with the stage-1 decoder, compare with real images in an independent feature space.

No Inception or DINO weights exist offline, so FD_eval is the Fréchet distance in the penultimate features of a
CNN classifier trained in-process on the training images (``lightning_papers.metrics.feature_classifier``; a
different architecture and seed from the encoder), against the training images as the reference set. Its floor is
the FD of as many *held-out real* images against the same reference: generated samples at the floor are as close to
the data as fresh real images are. KID (unbiased) checks FD's small-sample bias; sample accuracy is the classifier's
accuracy on the conditional samples' intended labels; precision/recall are k-NN manifold estimates (Kynkäänniemi et
al. 2019). ``fd_enc`` is FD in the encoder's own latent space (token-mean-pooled): circular for RAE, secondary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def pooled(latents: torch.Tensor) -> np.ndarray:
    """Token-mean-pooled latents ``[N, C]`` (float64) for FD in the encoder's space."""
    return latents.detach().double().mean(dim=(2, 3)).cpu().numpy()


class SampleEvaluator:
    """Decoder + real images + classifier of one latent cache folder (see the module docstring)."""

    def __init__(self, tokenizer: Any, classifier: Any, reference: torch.Tensor | None, held_out: torch.Tensor | None,
                 real_latents: torch.Tensor, class_names: list[str] | None = None) -> None:  # fmt: skip
        self.tokenizer, self.classifier = tokenizer, classifier
        self.reference, self.held_out = reference, held_out
        self.real_pooled = pooled(real_latents)
        self.class_names = class_names
        self._ref_features: np.ndarray | None = None
        self._floors: dict[int, float] = {}

    @classmethod
    def from_folder(cls, root: str | Path, meta: dict[str, Any], fingerprint: str,
                    max_reference: int = 5000) -> SampleEvaluator:  # fmt: skip
        """Open what ``python -m lightning_papers.methods.rae.cache`` wrote under ``root`` (missing parts: skipped).
        A pixel-patch cache (``pixel_patch`` in ``meta``) is decoded by un-patching, not by a stage-1 decoder."""
        from lightning_papers.datamodules.latents import LatentCache
        from lightning_papers.methods.rae.dit_module import statistics_fingerprint

        root = Path(root)
        tokenizer: Any = None
        ckpt = meta.get("decoder_checkpoint")
        if meta.get("pixel_patch"):
            from lightning_papers.methods.rae.pixels import PixelTokenizer

            cache = LatentCache.open(root / "train")
            tokenizer = PixelTokenizer(cache.stats_state, int(meta["pixel_patch"]), float(meta.get("norm_eps", 1e-6)))
        elif ckpt:
            from lightning_papers.methods.rae.tokenizer import RAETokenizer

            tokenizer = RAETokenizer.from_checkpoint(ckpt)
            own = statistics_fingerprint(tokenizer.statistics.state_dict())
            if own != fingerprint:
                raise ValueError(f"the decoder checkpoint {ckpt!r} has latent statistics {own}, the cache "
                                 f"{fingerprint}: they are not the same latent space")  # fmt: skip
        classifier = None
        if (root / "eval_classifier.pt").is_file():
            from lightning_papers.metrics.feature_classifier import FeatureClassifier

            classifier = FeatureClassifier.load(root / "eval_classifier.pt")
        images = {}
        for split in ("train", "val"):
            path = root / f"{split}_images.npy"
            images[split] = torch.from_numpy(np.load(path)[:max_reference]) if path.is_file() else None
        real = torch.from_numpy(np.array(LatentCache.open(root / "train").latents[:max_reference]))
        return cls(tokenizer, classifier, images["train"], images["val"], real, meta.get("class_names") or None)

    @property
    def scores_images(self) -> bool:
        return self.tokenizer is not None and self.classifier is not None and self.reference is not None

    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor | None:
        if self.tokenizer is None:
            return None
        return torch.cat([self.tokenizer.decode(latents[i:i + batch_size].float().cpu()).cpu()
                          for i in range(0, len(latents), batch_size)])  # fmt: skip

    def reference_features(self) -> np.ndarray:
        if self._ref_features is None:
            self._ref_features = self.classifier.embed(self.reference).numpy()
        return self._ref_features

    def floor(self, n: int) -> float:
        """FD of ``n`` held-out real images against the reference (NaN without held-out images)."""
        from lightning_papers.metrics.generative import frechet_distance

        n = min(n, 0 if self.held_out is None else len(self.held_out))
        if n < 2:
            return float("nan")
        if n not in self._floors:
            self._floors[n] = frechet_distance(self.classifier.embed(self.held_out[:n]).numpy(),
                                               self.reference_features())  # fmt: skip
        return self._floors[n]

    def score(self, latents: torch.Tensor, labels: torch.Tensor,
              images: torch.Tensor | None = None) -> dict[str, float]:  # fmt: skip
        """``fd_enc`` always; with decoder, classifier and images also fd_eval, its floor and ratio, KID, accuracy,
        precision and recall. ``images``: the latents already decoded (:meth:`decode`), to decode them once."""
        from lightning_papers.metrics.generative import frechet_distance, kernel_distance, precision_recall

        out = {"fd_enc": frechet_distance(pooled(latents), self.real_pooled)}
        if not self.scores_images:
            return out
        images = self.decode(latents) if images is None else images
        feats = self.classifier.embed(images).numpy()
        ref = self.reference_features()
        out["fd_eval"] = frechet_distance(feats, ref)
        out["fd_floor"] = self.floor(len(latents))
        out["fd_ratio"] = out["fd_eval"] / out["fd_floor"]
        out["kid"] = kernel_distance(feats, ref, subsets=20, subset_size=min(len(feats), len(ref), 500))[0]
        out["accuracy"] = float((self.classifier.predict(images) == labels.cpu()).double().mean())
        out["precision"], out["recall"] = precision_recall(ref[: 4 * len(feats)], feats)
        return out
