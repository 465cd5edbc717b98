"""``python -m scripts.make_font_subset --source wqy-microhei.ttc``: rebuild the bundled grid font.

The grids draw Chinese captions; a fresh machine often has no font with Chinese glyphs,
so a subset of WenQuanYi Micro Hei (Apache-2.0, from Debian's ``fonts-wqy-microhei``:
``apt-get download fonts-wqy-microhei && dpkg-deb -x fonts-wqy-microhei_*.deb x``) ships in
``clip_retrieval/fonts/``. The characters kept are written to ``subset-chars.txt`` beside it:

- ASCII, Latin-1 punctuation, general punctuation, CJK symbols and full-width forms;
- the 6,763 hanzi of GB 2312 (level 1: 3,755 everyday characters; level 2: 3,008 rarer ones),
  computed from Python's own gb2312 codec;
- the 2,000 most frequent characters of jieba's dictionary (modern words GB 2312 lacks);
- every character of the shipped rules table and demo captions.

Needs fontTools (``pip install fonttools``, in the ``dev`` extra); runs ``pyftsubset``.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FONT_DIR = ROOT / "clip_retrieval" / "fonts"
FONT_NAME = "wqy-microhei-subset.ttf"
RANGES = [(0x20, 0x7E), (0xA0, 0xFF), (0x2010, 0x2027), (0x2030, 0x203B), (0x2190, 0x2193), (0x2460, 0x2473),
          (0x3000, 0x303F), (0xFF01, 0xFF5E), (0xFFE0, 0xFFE5)]


def gb2312_hanzi() -> list[str]:
    """Rows 16-87 of GB 2312 (bytes 0xB0A1-0xF7FE): its 6,763 hanzi, levels 1 and 2."""
    out = []
    for hi in range(0xB0, 0xF8):
        for lo in range(0xA1, 0xFF):
            try:
                out.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return out


def frequent_characters(n: int) -> list[str]:
    """The ``n`` hanzi with the largest summed word frequency in jieba's dictionary."""
    import jieba

    counts: collections.Counter = collections.Counter()
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as fh:
        for line in fh:
            word, freq, *_ = line.split()
            for ch in word:
                if "\u4e00" <= ch <= "\u9fff":
                    counts[ch] += int(freq)
    return [ch for ch, _ in counts.most_common(n)]


def characters() -> str:
    chars = {chr(c) for lo, hi in RANGES for c in range(lo, hi + 1)}
    chars.update(gb2312_hanzi())
    chars.update(frequent_characters(2000))
    for path in (ROOT / "rules" / "expansions.yaml", ROOT / "data" / "captions.csv"):
        chars.update(ch for ch in path.read_text(encoding="utf-8") if ch.isprintable())
    return "".join(sorted(chars))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="wqy-microhei.ttc from Debian's fonts-wqy-microhei")
    parser.add_argument("--out", default=str(FONT_DIR), help=f"folder for the subset (default: {FONT_DIR})")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chars = out / "subset-chars.txt"
    chars.write_text(characters() + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "fontTools.subset", args.source, "--font-number=0",
               f"--text-file={chars}", f"--output-file={out / FONT_NAME}", "--name-IDs=*", "--name-languages=*",
               "--no-hinting", "--layout-features=*"]
    print(shlex.join(command))
    subprocess.run(command, check=True)
    print(f"{out / FONT_NAME}: {(out / FONT_NAME).stat().st_size / 1e6:.2f} MB, "
          f"{len(chars.read_text(encoding='utf-8')) - 1} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
