"""The seed project's dataset loaders on fixture data: the reference for `common/tests/loaders.rs`.

    seed_loaders_ref.py fixtures ROOT        writes small Hub-schema Parquet datasets under ROOT/hub/<owner>/<name>/
                                             <config>/<split>/ and PAWS-X JSON lines under ROOT/paws/nb/
    seed_loaders_ref.py run ROOT CASES OUT   runs the seed's `load_datasets` and `prepare_multi_dataset_dict`
                                             (taken from train_sparse_multidataset.py as written) for each case
                                             of CASES (JSON: {case: datasets-section}) and writes the rows of each
                                             block's train, eval (dev) and test split to OUT

Run with the reference venv and `PYTHONPATH=$SPLADE_ST52_PATH:<seed>` (datasets 4.4.2, the seed's pin).
`datasets.load_dataset` is replaced, in the seed's loader modules, by one that loads the fixture Parquet files
with `load_dataset("parquet", data_files=...)`; everything else is the seed's code. The seed's test split is not
filtered by `prepare_multi_dataset_dict` (it is unused); it is filtered here the same way, as ours is.
"""

import ast
import glob
import json
import os
import random
import re
import sys


def write_fixtures(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rnd = random.Random(1234)
    words = ("fjord bil hus skog elv fjell by vei tog båt sol regn snø vind lys natt dag mat vann hav øy "
             "bok skole lege helse stønad søknad barn jobb lønn skatt").split()

    def text(n=6):
        return " ".join(rnd.choice(words) for _ in range(rnd.randint(2, n)))

    def maybe(v, p):
        return None if rnd.random() < p else v

    def write(repo, config, split, rows, schema, files=1, row_group=None):
        d = os.path.join(root, "hub", repo, config, split)
        os.makedirs(d, exist_ok=True)
        per = (len(rows) + files - 1) // files
        for i in range(files):
            chunk = rows[i * per:(i + 1) * per]
            table = pa.Table.from_pylist(chunk, schema=schema)
            pq.write_table(table, os.path.join(d, f"{i:04d}.parquet"), row_group_size=row_group or max(1, len(chunk)))

    s = pa.string()
    triplet = pa.schema([("anchor", s), ("positive", s), ("negative", s)])
    for split, n, files in (("train", 90, 2), ("dev", 12, 1), ("test", 11, 1)):
        rows = [{"anchor": maybe(text(), 0.03), "positive": text(), "negative": maybe(text(), 0.1)} for _ in range(n)]
        write("Fremtind/all-nli-norwegian", "default", split, rows, triplet, files, row_group=16)

    answers = pa.struct([("text", pa.list_(s)), ("answer_start", pa.list_(pa.int32()))])
    norquad = pa.schema([("id", s), ("title", s), ("context", s), ("question", s), ("answers", answers)])
    for split, n in (("train", 30), ("validation", 8), ("test", 7)):
        rows = [{"id": f"nq{split}{i}", "title": text(3), "context": text(20), "question": maybe(text(), 0.05),
                 "answers": {"text": [text(2)], "answer_start": [3]}} for i in range(n)]
        write("ltg/norquad", "default", split, rows, norquad)

    choices = pa.struct([("text", pa.list_(s)), ("label", pa.list_(s))])
    obqa = pa.schema([("id", s), ("question_stem", s), ("choices", choices), ("answer", s), ("fact", s)])
    for split, n in (("train", 25), ("test", 9)):
        rows = [{"id": f"ob{i}", "question_stem": text(), "choices": {"text": [text(2), text(2)], "label": ["A", "B"]},
                 "answer": "A", "fact": rnd.choice([text(8), text(8), "", None])} for i in range(n)]
        write("ltg/noropenbookqa", "nb", split, rows, obqa)

    sqa = pa.schema([("id", s), ("question", s), ("answers", answers), ("context", s), ("title_en", s)])
    for lang, n_train in (("no", 21), ("da", 17), ("sv", 13)):
        for split, n in (("train", n_train), ("test", 6)):
            rows = [{"id": f"{lang}{i}", "question": text(), "answers": {"text": [text(2)], "answer_start": [0]},
                     "context": maybe(text(15), 0.05), "title_en": text(2)} for i in range(n)]
            write("alexandrainst/scandi-qa", lang, split, rows, sqa, files=2 if split == "train" else 1)

    sda = pa.schema([("query", s), ("pos", s), ("neg", s)])
    rows = [{"query": text(), "pos": text(12), "neg": text(12)} for _ in range(33)]
    write("jealk/supervised-da", "default", "train", rows, sda)

    ddsc = pa.schema([("query", s), ("positive", s), ("negative", s), ("language", s), ("task", s),
                      ("instruction", s), ("prompt", s), ("response", s)])
    tasks = ["retrieval", "text-matching-short", "text-matching-long", "unit-triple", "classification"]
    rows = [{"query": text(), "positive": text(10), "negative": maybe(text(10), 0.4),
             "language": rnd.choice(["norwegian", "danish", "swedish"]), "task": rnd.choice(tasks),
             "instruction": maybe(text(5), 0.03), "prompt": text(), "response": text()} for _ in range(420)]
    write("DDSC/nordic-embedding-training-data", "default", "train", rows, ddsc, files=3, row_group=50)

    eti = pa.schema([("anchor", s), ("positive", s), ("negative", s), ("source", s), ("language", s),
                     ("task_type", s), ("mode", s)])

    def eti_rows(n, first_negative=True, p_none=0.2):
        out = []
        for i in range(n):
            neg = maybe(text(8), p_none)
            if i == 0:
                neg = text(8) if first_negative else None
            out.append({"anchor": text(), "positive": text(10), "negative": neg, "source": maybe("nav.no", 0.3),
                        "language": "norwegian", "task_type": "qa", "mode": None})
        return out

    for split, n, first in (("train", 40, True), ("dev", 9, False), ("test", 8, True)):
        write("thivy/eti-embedding-training-data", "default", split, eti_rows(n, first), eti)
    write("fix/eti-train-only", "default", "train", eti_rows(57, False), eti)
    # An ETI-like dataset without `positive`: the missing-column error.
    bad = pa.schema([("anchor", s), ("answer", s)])
    write("fix/eti-no-positive", "default", "train", [{"anchor": text(), "answer": text()} for _ in range(5)], bad)

    paws = os.path.join(root, "paws", "nb")
    os.makedirs(paws, exist_ok=True)
    for name, n in (("translated_train.json", 40), ("translated_dev_2k.json", 10), ("translated_test_2k.json", 10)):
        with open(os.path.join(paws, name), "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({"id": i, "sentence1": maybe(text(), 0.05 if i > 5 else 0), "sentence2": text(),
                                    "label": rnd.choice([0, 1])}, ensure_ascii=False) + "\n")


def seed_functions():
    """`load_datasets` and `prepare_multi_dataset_dict` from the seed's script, compiled as written, with the
    names they use (the script's own imports would pull in mlflow and the trainer)."""
    import logging

    from datasets import DatasetDict
    from utils.data_loader_ddsc import load_ddsc_data
    from utils.data_loader_eti import load_eti_data
    from utils.data_loader_nli import load_nli_data
    from utils.data_loader_scandi_qa import load_scandi_qa_data
    from utils.sparse_data_formatter import (format_ddsc_for_sparse, format_eti_for_sparse, format_nli_for_sparse,
                                             format_qa_for_sparse, validate_sparse_dataset)

    script = next(os.path.join(p, "train_sparse_multidataset.py") for p in sys.path
                  if os.path.isfile(os.path.join(p, "train_sparse_multidataset.py")))
    tree = ast.parse(open(script, encoding="utf-8").read())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name in ("load_datasets", "prepare_multi_dataset_dict")]
    assert len(wanted) == 2, "seed script changed"
    ns = dict(DatasetDict=DatasetDict, Dict=dict, logger=logging.getLogger("seed"), load_nli_data=load_nli_data,
              load_scandi_qa_data=load_scandi_qa_data, load_ddsc_data=load_ddsc_data, load_eti_data=load_eti_data,
              format_nli_for_sparse=format_nli_for_sparse, format_qa_for_sparse=format_qa_for_sparse,
              format_ddsc_for_sparse=format_ddsc_for_sparse, format_eti_for_sparse=format_eti_for_sparse,
              validate_sparse_dataset=validate_sparse_dataset)
    exec(compile(ast.Module(body=wanted, type_ignores=[]), script, "exec"), ns)
    return ns["load_datasets"], ns["prepare_multi_dataset_dict"]


def patch_load_dataset(root):
    import datasets

    real = datasets.load_dataset
    hub = os.path.join(root, "hub")

    def local(repo, config, split):
        return sorted(glob.glob(os.path.join(hub, repo, config or "default", split, "*.parquet")))

    def fake(path, name=None, split=None, data_files=None, **kw):
        if path == "parquet":
            # The seed's ScandiQA URLs: .../datasets/<repo>/resolve/refs%2Fconvert%2Fparquet/<lang>/<split>/*.parquet
            mapped = {}
            for sp, url in data_files.items():
                m = re.search(r"/datasets/(.+?)/resolve/refs%2Fconvert%2Fparquet/([^/]+)/([^/]+)/(\*\.parquet)$", url)
                assert m, url
                mapped[sp] = os.path.join(hub, m.group(1), m.group(2), m.group(3), m.group(4))
            return real("parquet", data_files=mapped, **kw)
        base = os.path.join(hub, path, name or "default")
        if not os.path.isdir(base):
            raise FileNotFoundError(f"no fixture for {path} {name}")
        splits = sorted(d for d in os.listdir(base) if local(path, name, d))
        ds = real("parquet", data_files={s: local(path, name, s) for s in splits})
        return ds[split] if split is not None else ds

    import utils.data_loader_ddsc
    import utils.data_loader_eti
    import utils.data_loader_nli
    import utils.data_loader_scandi_qa
    for m in (utils.data_loader_nli, utils.data_loader_eti, utils.data_loader_ddsc, utils.data_loader_scandi_qa):
        m.load_dataset = fake


def run(root, cases_path, out_path):
    patch_load_dataset(root)
    load_datasets, prepare = seed_functions()
    cases = json.load(open(cases_path, encoding="utf-8"))
    out = {}
    for case, section in cases.items():
        loaded = load_datasets({"datasets": section})
        train, dev = prepare(loaded)
        out[case] = {}
        for block in loaded:
            test = loaded[block]["test"].filter(lambda x: all(v is not None for v in x.values()))
            out[case][block] = {
                split: {"columns": ds.column_names, "rows": [dict(r) for r in ds]}
                for split, ds in (("train", train[block]), ("dev", dev[block]), ("test", test))
            }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    if sys.argv[1] == "fixtures":
        write_fixtures(sys.argv[2])
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
