#!/usr/bin/env python3
"""Reference for `aion bench train`: LoRA training speed and memory of transformers + PEFT.

Loads the base that `aion_trainer::export_dequantised` wrote (a Hugging Face model directory),
applies a PEFT LoRA with the trainer's benchmark settings (r 16, alpha 16, dropout 0, on
q/k/v/o), and trains `--steps` AdamW steps (lr 2e-4, weight decay 0) on the token ids aion
trains on (`--ids`: [{"ids": [...], "prompt_len": n}, ...], loss on the response only). The
first step is a warm-up and is not timed. Prints one JSON line with the same fields as aion's
runs: tokens, wall_s, cpu_s, loss, rss_after_load, peak_train, peak_process (bytes).

  python peft_train_bench.py --base DIR --ids FILE [--batch 1] [--steps 5] [--threads N]
  python peft_train_bench.py ... --device cuda --nf4 --compute-dtype bfloat16
      # QLoRA on a GPU (needs bitsandbytes), as `aion-bench train --device cuda` runs it
"""
import argparse
import json
import os
import resource
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0), as aion's runs do after loading."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="exported base model directory")
    parser.add_argument("--ids", required=True, help="JSON file of token ids from aion")
    parser.add_argument("--batch", type=int, default=1, help="sequences per optimiser step")
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps, first untimed")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--nf4",
        action="store_true",
        help="load the base in bitsandbytes NF4 with double quantisation (CUDA only)",
    )
    parser.add_argument(
        "--compute-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="bitsandbytes' bnb_4bit_compute_dtype with --nf4",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in backward (transformers' gradient checkpointing)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_kwargs = {"torch_dtype": torch.float32}
    if args.nf4:
        load_kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, args.compute_dtype),
        )
        load_kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(args.base, **load_kwargs)
    if not args.nf4:
        model.to(device)
    model.config.use_cache = False
    if args.gradient_checkpointing:
        # Non-reentrant, and inputs that require grad so the frozen embedding does not cut the
        # graph: what PEFT's prepare_model_for_kbit_training sets up.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0
    )

    with open(args.ids) as f:
        examples = json.load(f)
    if len(examples) < args.batch * args.steps:
        raise SystemExit(f"{args.ids}: {len(examples)} examples, need batch x steps")

    rss_after_load = status_bytes("VmRSS")
    reset = reset_peak_rss()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    tokens = 0
    loss = float("nan")
    for step in range(args.steps):
        chosen = examples[step * args.batch : (step + 1) * args.batch]
        # All sequences have the same length (aion fills every one to --seq-len): no padding.
        ids = torch.tensor([e["ids"] for e in chosen], device=device)
        labels = ids.clone()
        for row, e in enumerate(chosen):
            labels[row, : e["prompt_len"]] = -100
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        loss = out.loss.item()
        sync()
        if step == 0:
            wall0, cpu0 = time.perf_counter(), time.process_time()
        else:
            tokens += ids.numel()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    peak_train = status_bytes("VmHWM")
    # ru_maxrss is in KiB on Linux; it is not reset by clear_refs, so it covers loading too.
    peak_process = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "runtime": f"peft {peft.__version__}, torch {torch.__version__}",
        "tokens": tokens,
        "wall_s": wall,
        "cpu_s": cpu,
        "loss": loss,
        "rss_after_load": rss_after_load,
        "peak_train": peak_train if reset else None,
        "peak_process": peak_process,
    }
    if device.type == "cuda":
        result["peak_cuda_allocated"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
