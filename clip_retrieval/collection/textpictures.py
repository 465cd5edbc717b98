"""Generated pictures with Chinese text on them: chat screenshots, receipts, invoices, tickets, notices, signs.

Owns drawing them from a seed with the bundled CJK font (``fonts/``, GB 2312), at several
text sizes, then roughening them as phones and scanners do (a slight rotation, sensor noise,
JPEG compression; signs stand on a generated photo), and what each one says: its lines and a
phrase only it holds (its ``key``, a shop, a company, a train), so a benchmark knows which
picture a query is for. Same seed, same bytes. It must not run OCR, encode or search.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .generated import SCENES, SUBJECTS, render

FONT = Path(__file__).resolve().parent.parent / "fonts" / "wqy-microhei-subset.ttf"
KINDS = ("chat", "receipt", "invoice", "ticket", "notice", "sign")
KIND_WORDS = {"receipt": "购物小票", "invoice": "发票", "ticket": "火车票", "notice": "通知"}

_SURNAMES = "王李张刘陈杨赵黄周吴徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董袁潘蒋蔡余杜叶程魏苏吕丁任沈"
_SHOPS = ("牛肉面", "火锅店", "烧烤店", "奶茶店", "书店", "大药房", "便利店", "面包房", "花店", "眼镜店", "水果店",
          "理发店", "洗衣店", "茶馆", "饺子馆", "包子铺", "咖啡馆", "五金店")
_CITIES = ("北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "西安", "南京", "重庆", "天津", "苏州", "长沙",
           "郑州", "青岛", "大连", "厦门", "昆明", "沈阳", "济南", "合肥", "福州", "南昌", "贵阳")
_TRADES = ("科技", "贸易", "文化传媒", "建筑工程", "餐饮管理", "电子商务", "物流", "医疗器械", "教育咨询", "印刷")
_COMMUNITIES = ("阳光花园", "幸福家园", "翠湖名苑", "金色港湾", "锦绣华庭", "绿城春晓", "书香门第", "碧水云天",
                "紫荆公寓", "海棠小区", "梧桐雅居", "银杏花园")
_TOPICS = ("停水", "停电", "电梯检修", "消防演练", "垃圾分类", "车位调整", "外墙清洗", "燃气安全检查")
_FRIENDS = ("小明", "阿华", "老周", "丽丽", "张老师", "王经理", "妈妈", "小陈")
_PLACES = ("人民公园", "图书馆", "地铁站", "体育馆", "博物馆", "电影院", "火车站", "医院")
_GOODS = ("矿泉水", "方便面", "牛奶", "面包", "苹果", "洗衣液", "纸巾", "酸奶", "鸡蛋", "大米")


@dataclass(frozen=True)
class TextPicture:
    """A drawn picture: its file name, kind, the lines written on it (ground truth) and its unique phrases."""

    name: str
    kind: str
    lines: tuple[str, ...]
    key: str                 # a phrase written only on this picture
    code: str | None = None  # an ASCII code written on it (a train or invoice number), for full-width queries


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT), size)


class _Keys:
    """Phrases never used twice in one collection."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def unique(self, make) -> str:
        for _ in range(1000):
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value
        raise ValueError("ran out of unique phrases; ask for fewer pictures")


def _content(kind: str, rng: random.Random, keys: _Keys) -> tuple[list[str], str, str | None]:
    """(lines, key, code) for one picture of ``kind``."""
    money = f"{rng.randint(3, 980)}.{rng.randint(0, 99):02d}"
    date = f"2024年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"
    if kind == "receipt":
        key = keys.unique(lambda: rng.choice(_SURNAMES) + "记" + rng.choice(_SHOPS))
        goods = rng.sample(_GOODS, 3)
        return ([key, "购物小票", *(f"{g} x{rng.randint(1, 4)}  {rng.randint(2, 40)}.00" for g in goods),
                 f"合计：{money}元", "谢谢惠顾 欢迎再来"], key, None)
    if kind == "invoice":
        key = keys.unique(lambda: rng.choice(_CITIES) + rng.choice(_SURNAMES) + "氏" + rng.choice(_TRADES))
        code = keys.unique(lambda: f"No.{rng.randint(10_000_000, 99_999_999)}")
        return (["增值税电子普通发票", f"发票号码：{code}", f"购买方：{key}有限公司", f"价税合计：¥{money}",
                 f"开票日期：{date}"], key, code)
    if kind == "ticket":
        a, b = rng.sample(_CITIES, 2)
        code = keys.unique(lambda: f"{rng.choice('GDK')}{rng.randint(100, 9999)}")
        key = f"{a}站{b}站"
        keys.used.add(key)
        return ([f"{code}次  {a}站 → {b}站", f"{date} {rng.randint(6, 22):02d}:{rng.choice(['05', '20', '45'])}开",
                 f"{rng.randint(1, 16):02d}车{rng.randint(1, 20):02d}{rng.choice('ABCDF')}号  二等座",
                 f"票价：¥{money}", "火车票 仅供报销使用"], f"{code}次", code)
    if kind == "notice":
        pair = keys.unique(lambda: f"{rng.choice(_COMMUNITIES)}|{rng.choice(_TOPICS)}")
        community, topic = pair.split("|")
        key = f"{community}{topic}"
        return ([f"{key}通知", f"{community}全体业主：", f"{date}上午九点起进行{topic}，",
                 "请大家提前做好准备。", "特此通知", f"{community}物业服务中心"], key, None)
    if kind == "chat":
        friend = rng.choice(_FRIENDS)
        time_said = f"{rng.choice(['上午', '下午', '晚上'])}{rng.randint(1, 11)}点"
        key = keys.unique(lambda: f"{rng.choice(_CITIES)}{rng.choice(_PLACES)}")
        return ([friend, f"明天{time_said}在{key}门口见？", "好的，不见不散", f"记得带上{rng.choice(_GOODS)}",
                 "收到"], key, None)
    key = keys.unique(lambda: rng.choice(_SURNAMES) + "家" + rng.choice(_SHOPS))
    return [key, f"营业时间 {rng.randint(7, 10)}:00-{rng.randint(20, 23)}:00"], key, None


def _layout(kind: str, lines: list[str], rng: random.Random, scale: float) -> Image.Image:
    """The clean picture: a canvas per kind, the lines drawn at a size scaled by ``scale``."""
    if kind == "sign":
        subject, scene = rng.choice(SUBJECTS), rng.choice(SCENES)
        img = render(subject, scene, rng, size=160).resize((640, 480), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        size = int(44 * scale)
        board = (rng.randint(20, 80), rng.randint(20, 60))
        width = max(draw.textlength(line, font=_font(size if i == 0 else size // 2)) for i, line in enumerate(lines))
        colour = rng.choice([(160, 20, 20), (20, 60, 140), (30, 100, 50), (90, 50, 20)])
        draw.rectangle([board[0], board[1], board[0] + width + 40, board[1] + size * 2 + 20], fill=colour)
        draw.text((board[0] + 20, board[1] + 10), lines[0], font=_font(size), fill=(250, 240, 200))
        draw.text((board[0] + 20, board[1] + 20 + size), lines[1], font=_font(size // 2), fill=(250, 250, 250))
        return img
    canvases = {"chat": ((540, 960), (237, 237, 237)), "receipt": ((420, 720), (252, 252, 248)),
                "invoice": ((900, 520), (250, 246, 236)), "ticket": ((760, 420), (222, 236, 248)),
                "notice": ((720, 900), (255, 255, 255))}
    (w, h), bg = canvases[kind]
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    size = max(16, int({"chat": 24, "receipt": 20, "invoice": 22, "ticket": 24, "notice": 24}[kind] * scale))
    y = 30
    for i, line in enumerate(lines):
        font = _font(int(size * 1.3) if i == 0 and kind in ("notice", "invoice", "receipt") else size)
        length = draw.textlength(line, font=font)
        if kind == "chat":
            mine = i % 2 == 0 and i > 0
            x = w - length - 60 if mine else 40
            if i > 0:
                draw.rounded_rectangle([x - 14, y - 10, x + length + 14, y + font.size + 12], radius=10,
                                       fill=(149, 236, 105) if mine else (255, 255, 255))
        elif kind in ("notice", "receipt") and i in (0, len(lines) - 1):
            x = (w - length) / 2
        else:
            x = 40
        colour = (190, 20, 20) if (kind == "notice" and i == 0) or (kind == "invoice" and i == 0) else (25, 25, 25)
        draw.text((x, y), line, font=font, fill=colour)
        y += int(font.size * (2.2 if kind == "chat" else 1.8))
        if kind == "invoice" and i == 0:
            draw.line([30, y - 8, w - 30, y - 8], fill=(160, 90, 60), width=2)
    return img


def _roughen(img: Image.Image, rng: random.Random, noise: np.random.Generator) -> Image.Image:
    """A slight rotation and sensor noise, as a photographed or re-shared screenshot has."""
    angle = rng.uniform(-3.0, 3.0)
    img = img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=img.getpixel((0, 0)))
    arr = np.asarray(img, dtype=np.int16) + noise.normal(0, rng.uniform(2, 9), (img.height, img.width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_text_pictures(folder: str | Path, count: int, seed: int = 0) -> list[TextPicture]:
    """``count`` JPEG pictures with text, kinds in turn, into ``folder``; what each one says."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    keys = _Keys(rng)
    made = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        lines, key, code = _content(kind, rng, keys)
        img = _roughen(_layout(kind, lines, rng, rng.uniform(0.85, 1.4)), rng, noise)
        name = f"text_{kind}_{i:04d}.jpg"
        img.save(folder / name, quality=rng.randint(55, 90))
        made.append(TextPicture(name, kind, tuple(lines), key, code))
    return made


def make_photos_without_text(folder: str | Path, count: int, seed: int = 0, size: int = 224) -> list[tuple[str, str, str]]:
    """``count`` generated photos (subjects on scenes, JPEG, no text): (file name, subject key, scene key) each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    made = []
    for i in range(count):
        subject, scene = SUBJECTS[i % len(SUBJECTS)], SCENES[(i // len(SUBJECTS)) % len(SCENES)]
        name = f"{subject.key}_{scene.key}_{i:02d}.jpg"
        render(subject, scene, rng, size=size).save(folder / name, quality=90)
        made.append((name, subject.key, scene.key))
    return made
