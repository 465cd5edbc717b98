"""The Chinese half of the command's help: one catalogue, applied to the parser ``cli`` builds.

Owns the Chinese text of every subcommand and option help; ``cli`` keeps the English text (with
its computed defaults) beside the option it describes. ``bilingual(parser)`` turns each help into
"中文 / English", as the errors read. Keys are ``"SUBCOMMAND --option"`` (the option's last
spelling, or the positional's name), ``"* --option"`` for an option every subcommand shares, and
``"sub SUBCOMMAND"`` for a subcommand's line in the list. A help already written "中文 / English"
is left as it is; ``tests/unit/test_cli_help.py`` fails on any help with no Chinese at all.
Must not import anything of the package: it is text.
"""

from __future__ import annotations

import argparse
import re

_CJK = re.compile(r"[\u3400-\u9fff]")

HELP_ZH = {
    "--version": "打印版本号并退出",
    "* --help": "显示此帮助并退出",
    "sub extract": "编码图库的图片和描述",
    "sub search": "用文字、图片或两者检索特征",
    "sub serve": "网页：在浏览器里使用所有检索方式",
    "sub classify": "在给定标签中对图片做零样本分类",
    "sub dedup": "找出图库中近似重复的图片",
    "sub index": "选择为特征提供检索的索引后端（search、serve、eval 和 replay 都用它）",
    "sub train": "在描述文件上从头训练（--arch）或微调（--model）CLIP 模型",
    "sub eval": "在描述、查询文件或演示基准上计算 Recall@K、mAP、NDCG@10 和名次",
    "sub models": "支持的模型名：语言、大小、公开的中文指标",
    "sub log": "回顾以往检索：筛选列表、统计、HTML 报告或 CSV 表",
    "sub replay": "重新运行日志中的检索，报告有何变化及原因",
    "* --device": "模型运行的设备",
    "* --quiet": "不显示进度条",
    "* --verbose": "在 stderr 上输出详细日志（和 traceback）",
    "* --features": "extract 生成的特征文件夹",
    "* --rules": "扩展表",
    "* --no-dict": "不用 CC-CEDICT 词典译出扩展表没有的词",
    "* --json": "在 stdout 上输出 JSON",
    "* --checkpoint": "本地权重文件或文件夹",
    "* --model": "模型名",
    "extract --csv": "描述文件，列为 image_path,caption",
    "extract --images": "改为索引一个图片文件夹（含子文件夹，无描述）；隐藏文件、特征文件夹、--out 和本工具画的拼图不计入；"
                        "只跟随仍在文件夹内的符号链接",
    "extract --follow-links": "与 --images 一起：也跟随指向文件夹外的符号链接",
    "extract --model": "模型名；`clipsou models` 列出全部",
    "extract --checkpoint": "本地权重文件或文件夹（离线使用）",
    "extract --out": "输出文件夹",
    "extract --batch-size": "每批图片数",
    "extract --num-workers": "解码图片的进程数",
    "extract --max-pixels": "跳过像素数超过此值的图片",
    "extract --rules": "扩展表，其措辞预先编码并存在特征旁",
    "extract --update": "只重新编码新增或改动的图片和描述，去掉已删除的",
    "extract --exact-decode": "按原尺寸解码 JPEG（与普通 PIL 相同）",
    "extract --skip-bad-rows": "跳过格式错误的 CSV 行并在清单中列出",
    "extract --engine": "在哪里编码图片：local 本进程；ray 集群上的 Ray 任务",
    "extract --ray-address": "与 --engine ray 一起：加入此地址的 Ray 集群",
    "extract --workers": "与 --engine ray 一起：同时编码的分片数",
    "extract --shard-size": "每个分片的图片数；中断后只重做未完成的分片",
    "search query_text": "文字查询，与 --query 相同",
    "search --query": "文字查询；不给时从 stdin 每行读一个查询",
    "search --top-k": "每个查询的结果数",
    "search --no-expand": "按原样检索，不用扩展表",
    "search --json": "每个查询在 stdout 上输出一个 JSON 对象",
    "search --model": "特征不是由此模型建立时拒绝",
    "search --checkpoint": "加载这些本地权重，而不是特征所记录的",
    "search --log-dir": "search_log.txt/.jsonl 写到哪里",
    "search --exact": "即使 index.json 指定了其他后端也逐一扫描所有向量",
    "search --where-path": "只检索此文件夹及其子文件夹中的图片（文件夹，不是文件名前缀）",
    "search --where-caption": "只检索描述包含此文字的图片（区分大小写）",
    "search --image": "查询图片：相似图片（不含它自己），或与 --to text 一起返回描述；与 --query 一起：“这张图，但……”",
    "search --to": "--image 返回什么",
    "search --text-weight": "图文组合查询中文字所占的比重",
    "search --fuse": "分别按图片特征和描述特征排序并融合（倒数名次融合）",
    "search --queries": "批量：每行一个文字查询的文件（输出 JSON Lines）",
    "search --image-dir": "批量：文件夹中每张图片都是一个查询（输出 JSON Lines）",
    "search --output": "批量：把 JSON Lines 写到这里而不是 stdout",
    "search --grid": "同时把查询和结果画成这个 PNG 拼图（批量时每个查询一个文件，编号）",
    "search --all": "显示全部 top-k，包括低于相关度阈值的结果（默认：只显示相关的结果，并说明另有几张低于阈值；--json 总是给出全部 top-k）",
    "serve --host": "绑定的地址",
    "serve --port": "监听的端口",
    "classify images": "要分类的图片文件",
    "classify --labels": "逗号分隔的标签",
    "classify --features": "从此特征文件夹取模型",
    "classify --rules": "标签和提示模板取自这里",
    "classify --no-expand": "按原样使用标签，不用模板",
    "classify --json": "每张图片一个 JSON 对象",
    "dedup --threshold": "两张图片算作重复的余弦相似度",
    "dedup --json": "一个 JSON 对象：{groups: [[{path, similarity}]]}",
    "index --backend": "精确扫描、FAISS 文件或 Qdrant collection",
    "index --kind": "faiss：索引类型",
    "index --fp16": "faiss：以 float16 存储向量，内存减半",
    "index --qdrant-path": "qdrant：在此文件夹中使用嵌入式本地模式",
    "index --qdrant-url": "qdrant：服务器或集群地址；API key 从环境变量读取",
    "index --collection": "qdrant：collection 名",
    "index --shards": "qdrant：新 collection 的分片数",
    "index --replicas": "qdrant：新 collection 的副本数",
    "index --hnsw-m": "qdrant：HNSW 每个节点的连接数",
    "index --hnsw-ef-construct": "qdrant：HNSW 建立时的搜索宽度",
    "index --hnsw-ef": "qdrant：HNSW 检索宽度，越大越精确也越慢",
    "index --recreate": "qdrant：删除 collection 并重新上传全部",
    "train --csv": "描述文件，列为 image_path,caption",
    "train --model": "微调此模型",
    "train --arch": "从头训练一个小架构",
    "train --checkpoint": "--model 的本地权重",
    "train --out": "存放 epoch_NNN/、best/ 和训练状态的文件夹",
    "train --epochs": "遍历训练图片的轮数",
    "train --batch-size": "每步的图文对数（对比学习的批）",
    "train --lr": "学习率",
    "train --val-fraction": "留作验证的图片比例",
    "train --seed": "划分、顺序和新权重的随机种子",
    "train --resume": "从 --out 中最后保存的轮次继续",
    "eval --queries": "query,image_path 行（一个查询的多行构成它的相关集合）",
    "eval --benchmark": "改为运行留出的基准测试（relevance：相关度阈值在 demo 和 demo-en 上的表现）",
    "eval --compare-expansion": "并排比较有无扩展",
    "eval --fuse": "同时评估图片与描述排序的倒数名次融合",
    "eval --no-expand": "按原样评估查询",
    "eval --exact": "即使 index.json 指定了后端，也不计算该后端自己的指标",
    "eval --per-query": "写出每个查询有无扩展时第一个相关结果的名次和倒数名次，并列出扩展帮助和损害最大的查询",
    "models --json": "在 stdout 上输出一个 JSON 数组",
    "log what": "stats：每日检索数、常见查询、第一名得分偏低、top-k 变化",
    "log --log": "search_log.jsonl 或它所在的文件夹",
    "log --since": "只列出此日期及以后的检索",
    "log --until": "只列出此日期及以前的检索（日期包含当天）",
    "log --query": "只列出包含此文字的查询",
    "log --model": "只列出用此模型的检索",
    "log --mode": "只列出此检索方式",
    "log --last": "只列出最近的 N 次匹配的检索",
    "log --json": "每条记录一个 JSON 对象",
    "log --html": "写出一个自包含的 HTML 页面（内嵌缩略图）",
    "log --csv": "把汇总表写成 CSV",
    "log --replay": "重放列出的检索并显示各自的状态",
    "log --features": "与 --replay 一起：对此特征文件夹重放",
    "log --chunk-size": "stats：每个 pandas 块的记录数",
    "replay --log": "要重放的 search_log.jsonl（或它所在的文件夹）",
    "replay --features": "对此特征文件夹重放，而不是日志记录的文件夹",
    "replay --json": "每条记录一个 JSON 对象",
}


def _key(command: str, action: argparse.Action) -> str:
    longest = max(action.option_strings, key=len) if action.option_strings else action.dest
    return f"{command} {longest}".strip()


def chinese_for(command: str, action: argparse.Action) -> str | None:
    """The catalogue's Chinese for one option of ``command`` (its own entry, else the shared one)."""
    key = _key(command, action)
    return HELP_ZH.get(key) or HELP_ZH.get("* " + key.split(" ", 1)[-1])


def is_bilingual(text: str | None) -> bool:
    """Help whose part before the first " / " holds Chinese: written bilingual, or already joined."""
    return bool(text) and " / " in text and bool(_CJK.search(text.split(" / ", 1)[0]))


def _join(zh: str | None, en: str | None) -> str | None:
    if not en or en == argparse.SUPPRESS or zh is None or is_bilingual(en):
        return en
    return f"{zh} / {en}"


def bilingual(parser: argparse.ArgumentParser, command: str = "") -> None:
    """Give every help of ``parser`` and its subcommands its Chinese half, in place."""
    for action in parser._actions:   # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = _join(HELP_ZH.get(f"sub {choice.dest}"), choice.help)
            for name, sub in action.choices.items():
                sub.description = _join(HELP_ZH.get(f"sub {name}"), sub.description)
                bilingual(sub, name)
        else:
            action.help = _join(chinese_for(command, action), action.help)
