# Split of the generated QM9 set for the shipped model: every 20th molecule (sorted names) is validation;
# the model's test sets are the embedded test split and the 8 reserved molecules (indices > 100000).
import json, sys
m = json.load(open("qm9gen/manifest.json"))["structures"]
names = sorted(m)
val = names[::20]
train = [n for n in names if n not in set(val)]
json.dump({"train": train, "validation": val, "test": []}, open(sys.argv[1], "w"), indent=1)
print(len(train), len(val))
