"""Prints the MTEB metadata of retrieval tasks as JSON (one object per task), for comparison with our table.

  mteb_task_table.py NAME...

Per task: name, dataset (Hub id), revision, eval_split (the first of eval_splits), subsets: [[hf_subset,
[languages]]], with the seed's evaluate_sparse_mteb.py filter applied (a task with more than five subsets keeps
the subsets whose key is among nob nno nor no nb nn, when any is).
"""

import json
import sys

import mteb

NORWEGIAN = {"nob", "nno", "nor", "no", "nb", "nn"}
out = []
for name in sys.argv[1:]:
    t = mteb.get_task(name)
    m = t.metadata
    langs = m.eval_langs
    if isinstance(langs, dict):
        keys = list(langs)
        if len(t.hf_subsets) > 5:
            nor = [k for k in keys if k in NORWEGIAN]
            if nor:
                keys = sorted(nor)
        subsets = [[k, list(langs[k])] for k in keys]
    else:
        subsets = [["default", list(langs)]]
    out.append({"name": m.name, "dataset": m.dataset["path"], "revision": m.dataset["revision"], "eval_split": m.eval_splits[0], "subsets": subsets})
print(json.dumps(out))
