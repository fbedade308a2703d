"""pytrec_eval (trec_eval) on a qrels JSON ({qid: {docid: grade}}) and a TREC run file.

Prints {"ndcg_cut_10", "recall_100", "mrr_10", ...} averaged over the run's queries. MRR@10 is trec_eval's
recip_rank on the run cut to its 10 best documents per query.
"""
import json
import sys

import pytrec_eval

qrels = json.load(open(sys.argv[1]))
run = {}
for line in open(sys.argv[2]):
    qid, _, doc, _, score, _ = line.split()
    run.setdefault(qid, {})[doc] = float(score)
measures = {"ndcg_cut.1,3,5,10,100", "recall.1,3,5,10,100", "P.1,3,5,10,100", "success.1,3,5,10,100"}
per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
top10 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in run.items()}
rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
out = {}
for m in next(iter(per_query.values())):
    out[m] = sum(v[m] for v in per_query.values()) / len(per_query)
out["mrr_10"] = sum(v["recip_rank"] for v in rr.values()) / len(rr)
out["n_queries"] = len(per_query)
print(json.dumps(out))
