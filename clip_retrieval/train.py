"""Contrastive training as CLIP does it: symmetric InfoNCE with a learnable temperature.

Owns the training loop, the validation split, per-epoch and best checkpoints (folders
that ``--checkpoint`` loads), and resuming. Trains open_clip models: a small
architecture from scratch (``--arch``) or a pretrained one (``--model``, fine-tuning).
It must not search or write features.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .collection.dataset import open_image, read_captions
from .core.errors import InputError
from .evaluate import retrieval_metrics
from .core.files import write_atomic, write_dir_atomic

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_SCALE_MAX = math.log(100.0)


@dataclass
class TrainResult:
    out: Path
    best: Path
    history: list[dict] = field(default_factory=list)

    @property
    def best_recall(self) -> float:
        return max((h["val_recall@1"] for h in self.history), default=0.0)


def _split(n_images: int, val_fraction: float, seed: int) -> set[int]:
    ids = list(range(n_images))
    random.Random(seed).shuffle(ids)
    n_val = max(1, int(round(n_images * val_fraction))) if val_fraction > 0 else 0
    return set(ids[:n_val])


def _load_pixels(paths: list[Path], preprocess, size: int, quiet: bool) -> torch.Tensor:
    """Decode every image once (training sets for this tool are small), stored as float16."""
    first = preprocess(open_image(paths[0], size))
    out = torch.empty(len(paths), *first.shape, dtype=torch.float16)
    for i, p in enumerate(tqdm(paths, desc="decode / 解码", unit="img", disable=quiet)):
        try:
            out[i] = preprocess(open_image(p, size)).half()
        except ValueError as exc:
            raise InputError(f"{p}: 无法读取图片 / {exc}; remove it from the captions file to train") from exc
    return out


def _model_for(model_name: str | None, checkpoint: str | None, arch: str | None, seed: int,
               languages: list[str] | None = None):
    """(model, model_cfg, preprocess, tokenizer, languages) for fine-tuning or training from scratch.

    A model trained from scratch reads the ``languages`` its captions are in (default zh and en).
    """
    import open_clip

    from .models import load_encoder, parse_model_name
    from .models.catalog import BUNDLED, FAMILIES, trainable_families
    from .models.openclip import arch_config, build_model

    if arch:
        cfg = arch_config(arch)
        model = build_model(cfg, seed=seed)
        preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
        return model, cfg, preprocess, open_clip.get_tokenizer("ViT-B-32"), list(languages or ["zh", "en"])
    family, spec = parse_model_name(model_name or "")
    if not FAMILIES[family].trainable:
        raise InputError(f"train fine-tunes {' and '.join(trainable_families())} models; "
                         f"{family} fine-tuning is not supported yet / 暂不支持微调 {family}")
    encoder = load_encoder(model_name, checkpoint, "cpu")
    if checkpoint and Path(checkpoint).is_dir():
        cfg = json.loads((Path(checkpoint) / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]
    elif family in BUNDLED:
        cfg = json.loads((BUNDLED[family] / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]
    else:
        arch, _, tag = spec.partition("/")
        cfg = open_clip.get_model_config(arch)
        if tag and open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu"):
            cfg = dict(cfg, quick_gelu=True)  # the saved config must rebuild the activation the weights expect
    model = encoder.model
    for p in model.parameters():
        p.requires_grad_(True)
    return model, cfg, encoder.preprocess, encoder.tokenize, sorted(encoder.languages)


@torch.no_grad()
def _validate(model, text_fn, pixels: torch.Tensor, tokens: torch.Tensor, relevant: list[set[int]]) -> dict:
    model.eval()
    img = torch.cat([torch.nn.functional.normalize(model.encode_image(pixels[i:i + 256].float()), dim=-1)
                     for i in range(0, len(pixels), 256)])
    txt = torch.cat([torch.nn.functional.normalize(text_fn(tokens[i:i + 256]), dim=-1)
                     for i in range(0, len(tokens), 256)])
    model.train()
    return retrieval_metrics((txt @ img.T).numpy(), relevant)


def train(csv: str | os.PathLike, out: str | os.PathLike, model: str | None = None, arch: str | None = None,
          checkpoint: str | None = None, epochs: int = 10, batch_size: int = 128, lr: float | None = None,
          val_fraction: float = 0.1, seed: int = 0, resume: bool = False, quiet: bool = False,
          weight_decay: float = 0.1, languages: list[str] | None = None) -> TrainResult:
    """Train and write ``out/epoch_NNN/``, ``out/best/`` (by validation text-to-image Recall@1) and state.

    ``languages``: what the captions are written in, recorded in the checkpoint so search pools
    only phrasings the model reads (``--arch`` only; a fine-tuned model keeps its own).
    """
    from open_clip.loss import ClipLoss

    from .models.openclip import save_checkpoint_dir, text_encoder_fn

    if bool(model) == bool(arch):
        raise InputError("--model 和 --arch 只能选一个 / give exactly one of --model (fine-tune) or --arch (train from scratch)")
    if epochs < 1 or batch_size < 2:
        raise InputError("--epochs 至少为 1，--batch-size 至少为 2 / --epochs must be >= 1 and --batch-size >= 2")
    torch.manual_seed(seed)
    coll = read_captions(csv)
    net, cfg, preprocess, tokenizer, languages = _model_for(model, checkpoint, arch, seed, languages)
    size = cfg["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    pixels = _load_pixels([coll.resolve(p) for p in coll.images], preprocess, size, quiet)
    tokens = tokenizer(coll.captions)
    val_images = _split(len(coll.images), val_fraction, seed)
    train_ids = [c for c, img in enumerate(coll.caption_image) if img not in val_images]
    val_caps = [c for c, img in enumerate(coll.caption_image) if img in val_images]
    if not train_ids:
        raise InputError(f"{csv}: 划分验证集后没有训练数据 / nothing left to train on after the validation split; "
                         f"add rows or lower --val-fraction")
    val_img_list = sorted(val_images)
    val_pos = {img: i for i, img in enumerate(val_img_list)}
    by_text: dict[str, set[int]] = {}
    for c in val_caps:
        by_text.setdefault(coll.captions[c], set()).add(val_pos[coll.caption_image[c]])
    relevant = [by_text[coll.captions[c]] for c in val_caps]
    # what ranking at random would score, to read Recall@1 against
    chance = float(np.mean([len(r) / len(val_img_list) for r in relevant])) if relevant else 0.0

    text_fn = text_encoder_fn(net)
    lr = lr if lr is not None else (5e-4 if arch else 1e-5)
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = max(1, len(train_ids) // batch_size)
    total = steps_per_epoch * epochs
    warmup = min(100, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    start_epoch = 0
    if resume:
        state_path = out / STATE_FILE
        if not state_path.is_file():
            raise InputError(f"--resume: {out} 中没有 {STATE_FILE} / no {STATE_FILE} in {out}; start without --resume")
        state = torch.load(state_path, weights_only=True)
        start_epoch = int(state["epoch"])
        from safetensors.torch import load_file
        net.load_state_dict(load_file(str(out / f"epoch_{start_epoch:03d}" / "open_clip_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
    loss_fn = ClipLoss()
    net.train()
    rng = random.Random(seed)
    for _ in range(start_epoch):
        rng.shuffle(list(train_ids))
    for epoch in range(start_epoch + 1, epochs + 1):
        order = list(train_ids)
        rng.shuffle(order)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", disable=quiet)
        running = 0.0
        for step in bar:
            batch = order[step * batch_size:(step + 1) * batch_size]
            imgs = pixels[[coll.caption_image[c] for c in batch]].float()
            img_f = torch.nn.functional.normalize(net.encode_image(imgs), dim=-1)
            txt_f = torch.nn.functional.normalize(text_fn(tokens[batch]), dim=-1)
            loss = loss_fn(img_f, txt_f, net.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                net.logit_scale.clamp_(0, LOG_SCALE_MAX)
            running = 0.9 * running + 0.1 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        metrics = _validate(net, text_fn, pixels[val_img_list], tokens[val_caps], relevant) if val_caps else {}
        entry = {"epoch": epoch, "loss": running, "val_recall@1": metrics.get("recall@1", 0.0),
                 "val_recall@5": metrics.get("recall@5", 0.0), "val_chance@1": chance}
        history.append(entry)
        log.info("epoch %d: %s", epoch, entry)
        if not quiet:
            tqdm.write(f"epoch {epoch}: loss {running:.3f}  val R@1 {entry['val_recall@1']:.3f} "
                       f"(chance {chance:.3f})  R@5 {entry['val_recall@5']:.3f}")
        folder = save_checkpoint_dir(net, cfg, out / f"epoch_{epoch:03d}", languages=languages)
        if entry["val_recall@1"] >= max(h["val_recall@1"] for h in history):
            write_dir_atomic(out / "best", lambda tmp: shutil.copytree(folder, tmp, dirs_exist_ok=True))
        state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "history": json.dumps(history), "torch_rng": torch.get_rng_state()}
        write_atomic(out / STATE_FILE, lambda tmp: torch.save(state, tmp))
    return TrainResult(out=out, best=out / "best", history=history)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
