"""Generated picture collections: the bundled demo data, test sets and training data.

Owns drawing simple cartoon subjects (pets, animals, a car) on simple scenes (grass,
snow, beach, night), with captions in Chinese and English, from a seed. Same seed,
same bytes. It must not encode or search.
"""

from __future__ import annotations

import csv
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Subject:
    key: str
    zh: str
    en: str
    kind: str            # which drawing
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    key: str
    zh: str              # "草地上" style phrase
    en: str


SUBJECTS = (
    Subject("golden_retriever", "金毛", "golden retriever", "dog", (218, 165, 32)),
    Subject("husky", "哈士奇", "husky", "husky", (128, 128, 136)),
    Subject("grey_cat", "灰猫", "grey cat", "cat", (120, 120, 120)),
    Subject("orange_cat", "橘猫", "orange cat", "cat", (235, 120, 20)),
    Subject("black_cat", "黑猫", "black cat", "cat", (25, 25, 25)),
    Subject("piglet", "小猪", "piglet", "pig", (245, 160, 180)),
    Subject("rabbit", "兔子", "rabbit", "rabbit", (245, 245, 245)),
    Subject("red_car", "红色汽车", "red car", "car", (210, 20, 30)),
)

SCENES = (
    Scene("grass", "草地上", "on the grass"),
    Scene("snow", "雪地里", "in the snow"),
    Scene("beach", "海边", "at the beach"),
    Scene("night", "夜晚", "at night"),
)


def is_demo_drawing(path: str) -> bool:
    """Whether a file name is one the demo generator writes (``{subject}_{scene}_NN.png``)."""
    subjects = "|".join(s.key for s in SUBJECTS)
    scenes = "|".join(s.key for s in SCENES)
    return re.fullmatch(rf"({subjects})_({scenes})_[^/\\]*\.(png|jpe?g)", os.path.basename(path)) is not None


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _scene(draw: ImageDraw.ImageDraw, scene: Scene, size: int, rng: random.Random) -> None:
    horizon = int(size * rng.uniform(0.45, 0.6))
    if scene.key == "grass":
        draw.rectangle([0, 0, size, horizon], fill=_jitter((135, 200, 245), rng))
        draw.rectangle([0, horizon, size, size], fill=_jitter((60, 160, 60), rng))
        for _ in range(40):
            x, y = rng.randrange(size), rng.randrange(horizon, size)
            draw.line([x, y, x + rng.randint(-3, 3), y - 8], fill=_jitter((30, 120, 30), rng), width=2)
    elif scene.key == "snow":
        draw.rectangle([0, 0, size, horizon], fill=_jitter((200, 210, 225), rng))
        draw.rectangle([0, horizon, size, size], fill=_jitter((248, 248, 252), rng, 5))
        for _ in range(60):
            x, y = rng.randrange(size), rng.randrange(size)
            draw.ellipse([x, y, x + 3, y + 3], fill=(255, 255, 255))
    elif scene.key == "beach":
        sea = horizon + int(size * 0.15)
        draw.rectangle([0, 0, size, horizon], fill=_jitter((100, 180, 250), rng))
        draw.rectangle([0, horizon, size, sea], fill=_jitter((20, 90, 180), rng))
        draw.rectangle([0, sea, size, size], fill=_jitter((238, 214, 160), rng))
        sx = rng.randint(20, size - 40)
        draw.ellipse([sx, 10, sx + 30, 40], fill=(255, 220, 60))
    else:
        draw.rectangle([0, 0, size, horizon], fill=_jitter((15, 20, 60), rng, 8))
        draw.rectangle([0, horizon, size, size], fill=_jitter((30, 30, 40), rng, 8))
        for _ in range(30):
            x, y = rng.randrange(size), rng.randrange(horizon)
            draw.point([x, y], fill=(255, 255, 220))
        mx = rng.randint(20, size - 40)
        draw.ellipse([mx, 12, mx + 26, 38], fill=(250, 250, 210))


def _subject(draw: ImageDraw.ImageDraw, subject: Subject, size: int, rng: random.Random) -> None:
    r = int(size * rng.uniform(0.17, 0.23))
    cx = int(size * rng.uniform(0.35, 0.65))
    cy = int(size * rng.uniform(0.5, 0.65))
    col = _jitter(subject.colour, rng)
    eye = (20, 20, 20) if sum(col) > 200 else (240, 220, 60)
    kind = subject.kind
    if kind == "car":
        w, h = int(r * 2.2), int(r * 0.7)
        draw.rectangle([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=col)
        draw.rectangle([cx - w // 4, cy - h, cx + w // 4, cy - h // 2], fill=col)
        draw.rectangle([cx - w // 4 + 5, cy - h + 4, cx + w // 4 - 5, cy - h // 2], fill=(170, 210, 240))
        for wx in (cx - w // 3, cx + w // 3):
            draw.ellipse([wx - h // 2, cy + h // 4, wx + h // 2, cy + h // 4 + h], fill=(20, 20, 20))
        return
    if kind == "cat":
        for side in (-1, 1):
            draw.polygon([(cx + side * r * 0.9, cy - r * 0.3), (cx + side * r * 0.8, cy - r * 1.4),
                          (cx + side * r * 0.2, cy - r * 0.85)], fill=col)
    elif kind == "rabbit":
        for side in (-1, 1):
            draw.ellipse([cx + side * r * 0.45 - r * 0.2, cy - r * 2.2, cx + side * r * 0.45 + r * 0.2, cy - r * 0.5],
                         fill=col, outline=(200, 170, 170))
    elif kind in ("dog", "husky"):
        for side in (-1, 1):
            draw.ellipse([cx + side * r * 0.95 - r * 0.3, cy - r * 0.7, cx + side * r * 0.95 + r * 0.3, cy + r * 0.6],
                         fill=_jitter(col, rng, 30))
    elif kind == "pig":
        for side in (-1, 1):
            draw.polygon([(cx + side * r * 0.9, cy - r * 0.4), (cx + side * r * 0.7, cy - r * 1.1),
                          (cx + side * r * 0.3, cy - r * 0.8)], fill=_jitter(col, rng, 10))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    if kind == "husky":
        draw.ellipse([cx - r * 0.6, cy - r * 0.1, cx + r * 0.6, cy + r], fill=(245, 245, 245))
        eye = (60, 140, 230)
    for side in (-1, 1):
        ex = cx + side * r * 0.38
        draw.ellipse([ex - r * 0.12, cy - r * 0.3, ex + r * 0.12, cy - r * 0.06], fill=eye)
    if kind == "pig":
        draw.ellipse([cx - r * 0.35, cy + r * 0.05, cx + r * 0.35, cy + r * 0.45], fill=(230, 120, 150))
        for side in (-1, 1):
            draw.ellipse([cx + side * r * 0.15 - 3, cy + r * 0.2, cx + side * r * 0.15 + 3, cy + r * 0.3], fill=(120, 40, 60))
    else:
        draw.ellipse([cx - r * 0.12, cy + r * 0.1, cx + r * 0.12, cy + r * 0.28], fill=(40, 20, 20))
    if kind == "cat":
        for side in (-1, 1):
            for dy in (0.2, 0.32):
                draw.line([cx + side * r * 0.2, cy + r * dy, cx + side * r * 0.95, cy + r * (dy - 0.08)],
                          fill=(230, 230, 230) if sum(col) < 200 else (60, 60, 60), width=1)


def render(subject: Subject, scene: Scene, rng: random.Random, size: int = 224) -> Image.Image:
    """One picture: a scene with a subject in it, jittered by ``rng``."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    _scene(draw, scene, size, rng)
    _subject(draw, subject, size, rng)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def captions_for(subject: Subject, scene: Scene, rng: random.Random, varied: bool = True) -> tuple[str, str]:
    """A Chinese and an English caption in the canonical phrasing (the words the demo model learns).

    ``varied=False`` always gives the full "scene + subject" phrasing, one caption per pair.
    """
    if not varied:
        return f"{scene.zh}的{subject.zh}", f"a {subject.en} {scene.en}"
    place = scene.zh.rstrip("上里")
    zh = rng.choice([f"{scene.zh}的{subject.zh}", f"{scene.zh}的一只{subject.zh}", f"{subject.zh}在{place}",
                     f"一只{subject.zh}", subject.zh])
    en = rng.choice([f"a {subject.en} {scene.en}", f"a photo of a {subject.en} {scene.en}", f"a {subject.en}"])
    return zh, en


# English words the English-only model (demo-en) learns beside each subject's and scene's own
# name: the category words a dictionary rendering of a Chinese word tends to give.
EN_SUBJECT_WORDS = {
    "golden_retriever": ["golden retriever", "golden retriever dog", "dog"],
    "husky": ["husky", "husky dog", "dog"],
    "grey_cat": ["grey cat", "gray cat", "cat"],
    "orange_cat": ["orange cat", "ginger cat", "cat"],
    "black_cat": ["black cat", "cat"],
    "piglet": ["piglet", "pig", "pink pig"],
    "rabbit": ["rabbit", "white rabbit", "bunny"],
    "red_car": ["red car", "car"],
}
EN_SCENE_WORDS = {
    "grass": ["on the grass", "on the lawn"],
    "snow": ["in the snow", "on the snow"],
    "beach": ["at the beach", "by the sea"],
    "night": ["at night", "in the night"],
}


def english_caption_for(subject: Subject, scene: Scene, rng: random.Random) -> str:
    """An English caption using any of the subject's and scene's English words (demo-en's training text)."""
    name = rng.choice(EN_SUBJECT_WORDS[subject.key])
    place = rng.choice(EN_SCENE_WORDS[scene.key])
    article = "an" if name[0] in "aeiou" else "a"
    return rng.choices([f"{article} {name} {place}", f"a photo of {article} {name} {place}", f"{article} {name}"],
                       weights=[2, 1, 1])[0]


def make_collection(out_dir: str | Path, per_pair: int = 2, seed: int = 0, size: int = 224,
                    english: bool = False, fmt: str = "png", varied: bool = True, chinese: bool = True,
                    pairs: set[tuple[str, str]] | None = None) -> Path:
    """Write images/ and captions.csv under ``out_dir``; returns the CSV path.

    Each image gets its Chinese caption, and its English one too when ``english`` is set;
    ``chinese=False`` gives English captions only, in the wider wording of ``english_caption_for``.
    ``pairs``: only these (subject key, scene key) pairs are drawn (default: all), so a collection
    can lack a subject or a scene (the relevance benchmark's absent queries).
    """
    if not (chinese or english):
        raise ValueError("a collection needs Chinese or English captions")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for subject in SUBJECTS:
        for scene in SCENES:
            if pairs is not None and (subject.key, scene.key) not in pairs:
                continue
            for n in range(per_pair):
                name = f"images/{subject.key}_{scene.key}_{n:02d}.{fmt}"
                img = render(subject, scene, rng, size)
                if fmt == "png":
                    img.save(out / name, format="PNG", optimize=False)
                else:
                    img.save(out / name, format="JPEG", quality=90)
                if not chinese:
                    rows.append((name, english_caption_for(subject, scene, rng)))
                    continue
                zh, en = captions_for(subject, scene, rng, varied)
                rows.append((name, zh))
                if english:
                    rows.append((name, en))
    csv_path = out / "captions.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image_path", "caption"])
        writer.writerows(rows)
    return csv_path
