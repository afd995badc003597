# Select QM9 indices <= 100000 for cdp's generated training set: mostly 9 heavy atoms, F-containing included,
# excluding the embedded validation and test molecules. Deterministic (seed 0).
import csv, os, re, sys, ast, random, json
from cdp.data.qm9 import qm9_data_dir
data = qm9_data_dir()
csv.field_size_limit(2**31-1)
rows = {}
for f in sorted(os.listdir(data)):
    if not re.fullmatch(r"qm9_part\d+\.csv", f): continue
    for r in csv.DictReader(open(os.path.join(data, f))):
        i = int(r["Index"])
        if i <= 100000:
            el = ast.literal_eval(r["Elements"])
            rows[i] = el
split = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../cdp/data/embedded/split.json")))
excl = {int(n.split("_")[1]) for k in ("validation", "test") for n in split[k]}
heavy9 = [i for i, el in rows.items() if sum(e != "H" for e in el) == 9 and i not in excl]
fcont = [i for i, el in rows.items() if "F" in el and sum(e != "H" for e in el) >= 5 and i not in excl]
other = [i for i, el in rows.items() if 5 <= sum(e != "H" for e in el) <= 8 and i not in excl]
rng = random.Random(0)
rng.shuffle(heavy9); rng.shuffle(other); rng.shuffle(fcont)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 1200
# 80 % 9-heavy (with all F-containing ones sampled at >= 5 %), 20 % 5-8 heavy
nf = max(n // 20, 1)
sel = fcont[:nf]
sel += [i for i in heavy9 if i not in set(sel)][: int(0.8 * n) - len(sel)]
sel += other[: n - len(sel)]
# chunk order: interleave so any prefix is a representative sample
rng.shuffle(sel)
print(len(rows), len(heavy9), len(fcont), len(other), file=sys.stderr)
print(",".join(map(str, sel)))
