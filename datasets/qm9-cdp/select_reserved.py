# 8 held-out QM9 molecules (indices > 100000, 9 heavy atoms) for acceptance evaluation; deterministic (seed 1).
import csv, os, re, ast, random
from cdp.data.qm9 import qm9_data_dir
data = qm9_data_dir(); csv.field_size_limit(2**31-1)
cand = []
for f in sorted(os.listdir(data)):
    if not re.fullmatch(r"qm9_part\d+\.csv", f): continue
    for r in csv.DictReader(open(os.path.join(data, f))):
        i = int(r["Index"])
        if i > 100000 and sum(e != "H" for e in ast.literal_eval(r["Elements"])) == 9:
            cand.append(i)
print(",".join(map(str, sorted(random.Random(1).sample(sorted(cand), 8)))))
