"""RAEDecoderModule and RAEDiTModule wired to Lightning: gradients, statistics, checkpoints, tokenizer, DDP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_papers.datamodules.images import ImageDataModule
from lightning_papers.methods.rae.encoder import RepresentationEncoder
from lightning_papers.methods.rae.module import RAEDecoderModule
from lightning_papers.methods.rae.normalizer import LatentStatistics
from lightning_papers.methods.rae.tokenizer import RAETokenizer
from tests.helpers.ddp import ddp_cpu_kwargs

SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_module(weights: Path | None = None, **kwargs: object) -> RAEDecoderModule:
    torch.manual_seed(0)  # the random frozen encoder (E-rand) is the same in every call
    encoder = RepresentationEncoder("rae_vit_tiny", layers="all", img_size=16, model_kwargs=SMALL,
                                    checkpoint_path=None if weights is None else str(weights))
    return RAEDecoderModule(encoder, decoder="xs", probe_samples=60, stats_batch_size=50, lr=1e-3, lr_min=1e-4,
                            **kwargs)  # fmt: skip


def tiny_data() -> ImageDataModule:
    return ImageDataModule(source="digits", image_size=16, batch_size=16, num_train=120, num_val=60)


def trainer(root: Path, steps: int, **kwargs: object) -> Trainer:
    return Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, default_root_dir=str(root), num_sanity_val_steps=0,
                   **kwargs)  # fmt: skip


def test_every_decoder_parameter_gets_a_gradient_and_the_encoder_none() -> None:
    module = tiny_module()
    dm = tiny_data()
    dm.setup("fit")
    images, _ = dm.labelled_subset("train", 8)
    recon = module.decoder(module.encoder(images))
    module.loss.generator_loss(recon, images, 0)["loss"].backward()
    assert all(p.grad is None for p in module.encoder.parameters())
    missing = [n for n, p in module.decoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert not any(p.requires_grad for p in module.encoder.parameters())


@pytest.mark.parametrize("with_weights_file", [False, True])
def test_fit_computes_exact_statistics_and_the_checkpoint_rebuilds_a_tokenizer(tmp_path: Path,
                                                                               with_weights_file: bool) -> None:
    weights = None
    if with_weights_file:
        weights = tmp_path / "encoder.pt"
        tiny_module().encoder.save_weights(weights)
    module, dm = tiny_module(weights, stats_path=str(tmp_path / "stats.pt")), tiny_data()
    t = trainer(tmp_path, 6, limit_val_batches=1, val_check_interval=6)
    t.fit(module, datamodule=dm)
    # statistics over the whole training set equal a two-pass float64 computation
    images, _ = dm.labelled_subset("train", 10_000)
    z = module.encoder(images).double()
    torch.testing.assert_close(module.statistics.mean, z.mean(0), rtol=0, atol=1e-9)
    torch.testing.assert_close(module.statistics.var, z.var(0, unbiased=False), rtol=0, atol=1e-9)
    assert LatentStatistics.load(tmp_path / "stats.pt").count == len(images)
    assert 0.0 <= float(t.callback_metrics["val/probe_accuracy"]) <= 1.0
    ckpt = tmp_path / "last.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    # an encoder with a weights file is rebuilt from it; a random one (E-rand) has no other source than the checkpoint
    assert any(k.startswith("encoder.") for k in saved) is (not with_weights_file)
    tok = RAETokenizer.from_checkpoint(ckpt)
    latents = tok.encode(images[:4])
    torch.testing.assert_close(latents, module.statistics.normalize(module.encoder(images[:4])))
    torch.testing.assert_close(tok.decode(latents), module.decode(latents))
    # resuming restores the decoder and statistics with the encoder rebuilt from its own source
    again = tiny_module(weights)
    trainer(tmp_path, 7, limit_val_batches=0).fit(again, datamodule=tiny_data(), ckpt_path=ckpt)
    assert again.statistics.count == module.statistics.count


def test_bad_input_fails_early(tmp_path: Path) -> None:
    encoder = RepresentationEncoder("rae_vit_tiny", layers=1, img_size=16, model_kwargs=SMALL)
    with pytest.raises(ValueError, match="noise_tau"):
        RAEDecoderModule(encoder, noise_tau=-0.1)
    with pytest.raises(ValueError, match="lr_min"):
        RAEDecoderModule(encoder, lr=1e-4, lr_min=1e-3)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        RAETokenizer.from_checkpoint(tmp_path / "nope.ckpt")


class SaveStatistics(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.save(pl_module.statistics.state_dict(), self.out / f"stats_rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_two_processes_merge_statistics_over_the_whole_training_set(tmp_path: Path) -> None:
    module, dm = tiny_module(), tiny_data()
    Trainer(max_steps=2, limit_val_batches=0, callbacks=[SaveStatistics(tmp_path)], **ddp_cpu_kwargs(),
            default_root_dir=str(tmp_path)).fit(module, datamodule=dm)  # fmt: skip
    dm.setup("fit")
    images, _ = dm.labelled_subset("train", 10_000)
    z = tiny_module().encoder(images).double()
    for rank in (0, 1):
        state = torch.load(tmp_path / f"stats_rank{rank}.pt", weights_only=False)
        assert int(state["count"]) == len(images)
        torch.testing.assert_close(state["mean"], z.mean(0), rtol=0, atol=1e-9)
        torch.testing.assert_close(state["var"], z.var(0, unbiased=False), rtol=0, atol=1e-9)


def test_dit_module_with_ema_checkpoints_the_averaged_network_and_samples_from_it(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from lightning_papers.datamodules.latents import LatentCacheDataModule
    from lightning_papers.methods.rae.dit_module import RAEDiTModule
    from lightning_papers.methods.rae.sample import load_dit
    from lightning_papers.methods.rae.transport import TransportConfig
    from tests.helpers.debug_configs import ensure_rae_cache

    root = ensure_rae_cache()
    dm = LatentCacheDataModule(str(root / "train"), batch_size=16, val_root=str(root / "val"))
    module = RAEDiTModule(dit="xs", transport=TransportConfig(sample_steps=3), eval_root=str(root), eval_per_class=2,
                          lr=1e-3, lr_min=1e-4)  # fmt: skip
    t = trainer(tmp_path, 5, callbacks=[EMAWeightAveraging(decay=0.5)], limit_val_batches=1, val_check_interval=5,
                check_val_every_n_epoch=None)
    t.fit(module, datamodule=dm)
    ckpt = tmp_path / "dit.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    key = "model.final.linear.weight"  # the EMA copy holds the network (built in configure_model)
    assert key in saved["state_dict"] and key in saved["current_model_state"]
    model, transport, meta = load_dit(str(ckpt))
    torch.testing.assert_close(model.state_dict()["final.linear.weight"], saved["state_dict"][key])
    assert transport.sample_steps == 3 and meta["num_classes"] == 2
    assert {"val/fd_enc", "val/nfe"} <= set(t.callback_metrics)
    from lightning_papers.methods.rae.sample import main as sample_main

    sample_main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "samples"), "--per_class", "3",
                 "--guidance", "repa", "--steps", "4"])  # fmt: skip
    drawn = np.load(tmp_path / "samples" / "samples.npz")
    assert drawn["latents"].shape == (6, 8, 4, 4) and drawn["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert int(drawn["nfe"]) == 4  # REPA-head guidance: one network evaluation per step
