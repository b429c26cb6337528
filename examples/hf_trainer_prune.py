"""Prune the embedded MiniLM-L6 on the embedded Rotten Tomatoes data in a Hugging Face Trainer script,
export the student to the packed sparse kernels and time it against the dense teacher.

    python examples/hf_trainer_prune.py                      # SPD: grafting, hidden + attention + logits
    python examples/hf_trainer_prune.py --method magnitude   # magnitude, labels + logit KD
    accelerate launch --multi_gpu --num_processes 2 examples/hf_trainer_prune.py   # 2 CPU processes, gloo
"""

import argparse
import copy
import os
import time

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

from spd.data import embedded_dataset
from spd.hf import DistillationTrainer, PruningCallback, finish_model
from spd.models import load_pretrained, set_attention_implementation

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--method", choices=("spd", "magnitude"), default="spd")
p.add_argument("--sparsity", type=float, default=0.9)
p.add_argument("--granularity", default="block32")
p.add_argument("--train-samples", type=int, default=2048)
p.add_argument("--max-length", type=int, default=48)
p.add_argument("--out", default="runs/hf_trainer_prune")
a = p.parse_args()
world, t0 = int(os.environ.get("WORLD_SIZE", "1")), time.time()  # processes under accelerate / torchrun
set_seed(0)  # the new classifier head is drawn before any Trainer seeds the RNGs
teacher, tok = load_pretrained("embedded", num_labels=2)  # MiniLM-L6 and a new classifier head
data = embedded_dataset().map(lambda b: tok(b["sentence"], truncation=True, max_length=a.max_length),
                              batched=True)  # fmt: skip
test, spd = data["test"], a.method == "spd"


def args(name, epochs, lr):  # a global batch of 32 sentences whatever the number of processes
    return TrainingArguments(f"{a.out}/{name}", num_train_epochs=epochs, learning_rate=lr, warmup_steps=0.1,
                             per_device_train_batch_size=32 // world, per_device_eval_batch_size=64,
                             save_strategy="no", logging_steps=20, report_to=[], seed=0,
                             use_cpu=not torch.cuda.is_available())  # fmt: skip


accuracy = lambda pred: {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}  # noqa: E731
kw = dict(train_dataset=data["train"].select(range(a.train_samples)), compute_metrics=accuracy,
          data_collator=DataCollatorWithPadding(tok))  # fmt: skip
dense = Trainer(model=teacher, args=args("teacher", 2, 1e-4), **kw)  # 1. fine-tune the dense teacher
dense.train()
student = copy.deepcopy(teacher)
# 2. SPD: magnitude on 12 updates, grafting p = 0.8, hidden + attention + logit loss; magnitude:
# the cubic schedule with 0.5 labels + 0.5 teacher logits (spd prune --method magnitude --kd)
cb = PruningCallback(a.method, a.sparsity, a.granularity)
prune = DistillationTrainer(model=student, teacher=teacher, graft={"p0": 0.8} if spd else None,
                            callbacks=[cb], args=args("prune", 2, 6.4e-4 if spd else 1e-4), **kw)  # fmt: skip
prune.train()
final = DistillationTrainer(model=student, teacher=teacher, distill=prune.distill,  # 3. fixed masks
                            graft={"p0": 0.8} if spd else None,  # the authors keep grafting at 0.8
                            args=args("final", 1, 6.4e-4 if spd else 5e-5), **kw)  # fmt: skip
final.train()
acc_t, acc_s = dense.evaluate(test)["eval_accuracy"], final.evaluate(test)["eval_accuracy"]
sparsity = cb.sparsity(student)
finish_model(student, "export")  # MaskedLinear -> packed SparseLinear (FFN GELU fused into the kernel)
acc_x = final.evaluate(test)["eval_accuracy"]
if final.is_world_process_zero():
    finish_model(copy.deepcopy(student), "densify").save_pretrained(f"{a.out}/student")  # zeros baked in
    ids = torch.randint(1000, 20000, (32, 128))

    @torch.inference_mode()
    def ms(m, n=5):
        set_attention_implementation(m.eval(), "sdpa")
        m(input_ids=ids)
        t = time.perf_counter()
        for _ in range(n):
            m(input_ids=ids)
        return (time.perf_counter() - t) / n * 1e3

    pos, d_ms, s_ms = sum(test["label"]) / len(test), ms(teacher), ms(student)
    print(f"{a.method} {a.granularity} sparsity {sparsity:.2f} | test accuracy: majority class "
          f"{max(pos, 1 - pos):.4f}, teacher {acc_t:.4f}, student {acc_s:.4f} = {acc_s / acc_t:.1%} of the "
          f"teacher (exported {acc_x:.4f}) | forward 32x128: dense {d_ms:.0f} ms, exported {s_ms:.0f} ms "
          f"({d_ms / s_ms:.2f}x) | {world} process(es), {time.time() - t0:.0f} s")  # fmt: skip
