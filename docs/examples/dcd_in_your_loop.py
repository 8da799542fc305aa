"""DCD in your own training loop: fine-tune a transformers CLIP folder with a cross-encoder teacher.

    python docs/examples/dcd_in_your_loop.py --clip CLIP_DIR --teacher BLIP_DIR --data pairs.csv --out OUT

pairs.csv holds image,caption rows (image paths relative to the file). See docs/plugin.md.
"""
import argparse, csv, math, os

import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from dcd_ext.losses import DCDLoss
from dcd_ext.teachers import load_teacher

p = argparse.ArgumentParser()
for flag in ("--clip", "--teacher", "--data", "--out"):
    p.add_argument(flag, required=True)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--batch-size", type=int, default=8)
args = p.parse_args()

rows = list(csv.DictReader(open(args.data, newline="")))
root = os.path.dirname(os.path.abspath(args.data))
image_id = {path: i for i, path in enumerate(sorted({r["image"] for r in rows}))}  # one id per image file

model, processor = CLIPModel.from_pretrained(args.clip), CLIPProcessor.from_pretrained(args.clip)
teacher = load_teacher("blip", args.teacher)  # or any callable teacher(images, texts, pairs) -> scores [P]
dcd = DCDLoss(teacher, k=3, alpha=0.2)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
order = torch.Generator().manual_seed(0)
for step in range(args.steps):
    batch = [rows[i] for i in torch.randperm(len(rows), generator=order)[: args.batch_size].tolist()]
    images = [Image.open(os.path.join(root, r["image"])).convert("RGB") for r in batch]
    texts = [r["caption"] for r in batch]
    ids = torch.tensor([image_id[r["image"]] for r in batch])
    out = model(**processor(images=images, text=texts, padding=True, return_tensors="pt"))
    terms = dcd(out.image_embeds, out.text_embeds, model.logit_scale.exp(), ids, images, texts)
    optimizer.zero_grad()
    terms.loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on its scale
    print(f"step {step}: loss {terms.loss.item():.4f} con {terms.con.item():.4f} dist {terms.dist.item():.4f} "
          f"hard {terms.hard.item():.4f} teacher {terms.teacher_pairs} pairs {terms.teacher_seconds:.3f} s")
model.save_pretrained(args.out)
processor.save_pretrained(args.out)
