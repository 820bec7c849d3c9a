#!/usr/bin/env python3
"""Reference logits for the trainer's PEFT parity test.

Loads the dequantised base that `aion_trainer::export_dequantised` wrote (a Hugging Face model
directory) with transformers, optionally applies a LoRA adapter with PEFT, and prints the logits
of one sequence of token ids as JSON: {"logits": [[...vocab...] per position]}.

  python peft_parity.py --base DIR [--adapter DIR] --ids 1,2,3
"""
import argparse
import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="exported base model directory")
    parser.add_argument("--adapter", help="PEFT LoRA adapter directory")
    parser.add_argument("--ids", required=True, help="comma-separated token ids")
    args = parser.parse_args()

    torch.manual_seed(0)
    # Eager attention in float32: the closest to candle's straightforward implementation.
    model = AutoModelForCausalLM.from_pretrained(
        args.base, torch_dtype=torch.float32, attn_implementation="eager"
    )
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
    model.eval()
    ids = torch.tensor([[int(i) for i in args.ids.split(",")]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main()
