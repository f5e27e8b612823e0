"""A plain Accelerate training loop: the baseline `ftctl run` is measured against.

The same model (the built-in tiny base), data (the demo target task, tokenised by the
project's own `prepare_dataset`, batched by its `collate`), method (LoRA r=16, alpha 32,
all linear layers), optimizer (AdamW, lr 3e-3, no weight decay, clipping at 1.0), schedule
shape (linear warmup, then cosine), batch size and worker count as the quickstart job, but
with nothing of ftctl's around it: no Ray, no validation, no metrics file, no checkpoints.
Rows are split across ranks by a `DistributedSampler`; the loss is the model's own mean
over each rank's label tokens; DDP averages the gradients.

Launch (2 processes over gloo):

    accelerate launch --num_processes 2 --cpu bench/plain_accelerate_loop.py --steps 150

Rank 0 prints one line `PLAIN_RESULT {json}` with: tokens (real tokens, padding excluded,
summed over ranks, counted as ftctl counts them), train_seconds (the training steps only,
after set-up), tokens_per_s, and wall-clock timestamps (time.time()) of the script's first
line, of set-up milestones and of the end of the first optimizer step, plus
seconds_to_first_step from the script's first line.
"""

import time

T_START = time.time()  # before any import: the script's own start

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup  # noqa: E402

from orchestrator.data.pipeline import collate, prepare_dataset  # noqa: E402
from orchestrator.models.tiny.build import ensure_tiny_base  # noqa: E402
from orchestrator.spec.models import DataSourceSpec, DataSpec  # noqa: E402

T_IMPORTS = time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=16, help="per process")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (ftctl: cpus_per_worker)")
    ap.add_argument("--data", default="builtin:demo/target_train.jsonl")
    ap.add_argument("--max-seq-len", type=int, default=64)
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    T_GROUP = time.time()

    model_dir = str(ensure_tiny_base())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    source = DataSourceSpec(path=args.data, format="instruction")
    with accelerator.main_process_first():  # rank 0 tokenises (or finds the cache) first
        train = prepare_dataset(source, DataSpec(train=source, max_seq_len=args.max_seq_len), tokenizer).dataset
    pad_id = int(tokenizer.pad_token_id)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=lambda rows: collate(rows, pad_id))

    torch.manual_seed(args.seed)  # same LoRA init on every rank
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    # Not passed to prepare(): Accelerate would step it once per process.
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    accelerator.wait_for_everyone()
    T_SETUP = time.time()

    step, epoch, tokens, loss_value = 0, 0, 0, float("nan")
    t_first_step = None
    started = time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            accelerator.backward(out.loss)
            accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if t_first_step is None:
                t_first_step = time.time()
            if step >= args.steps:
                break
        epoch += 1
    train_seconds = time.perf_counter() - started
    loss_value = float(out.loss.detach())

    total = torch.tensor([tokens], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(total)
    if rank == 0:
        result = {
            "world_size": world, "threads": torch.get_num_threads(), "steps": step, "epochs_started": epoch,
            "tokens": int(total.item()), "train_seconds": round(train_seconds, 3),
            "tokens_per_s": round(total.item() / train_seconds, 1), "last_loss_rank0": round(loss_value, 4),
            "t_start": T_START, "t_imports": T_IMPORTS, "t_group": T_GROUP, "t_setup": T_SETUP,
            "t_first_step": t_first_step, "seconds_to_first_step": round(t_first_step - T_START, 3),
        }
        print("PLAIN_RESULT " + json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
