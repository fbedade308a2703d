"""The Python side of the Hub-cache tests (common/tests/hub.rs): what `huggingface_hub` and `datasets` make of a
hub cache and of a repo's file list. Run with the reference venv's python, HF_HUB_OFFLINE=1.

Subcommands (each prints JSON on stdout, exits non-zero with the reason on stderr when a check fails):
  read-cache CACHE SPEC.json      for each {repo_id, repo_type, snapshot, files} in SPEC: snapshot_download and
                                  hf_hub_download per file (offline) find exactly our snapshot folder and files,
                                  and scan_cache_dir() reports the repos with no warnings
  write-cache CACHE REPO_ID TYPE DIR   writes DIR's files into CACHE as huggingface_hub's own download code does
                                  (its blob naming, _create_symlink and refs helpers); prints {"commit": ...}
  load-parquet FILE...            rows of datasets.load_dataset("parquet", data_files=[...], split="train")
  load-csv FILE...                rows of datasets.load_dataset("csv", data_files=[...], split="train"), with
                                  sep="\t" for .tsv files as datasets gives them when it infers the builder
  make-parquet OUT ROWS.json      writes ROWS (a list of objects) as a Parquet file with pyarrow
  data-files SPEC.json            datasets' own resolution (load_dataset_builder) of each [DIR, CONFIG or null] in
                                  SPEC, local folders with README configs or default patterns: a list of
                                  {config, splits: {split: [paths relative to DIR]}}
"""

import hashlib
import json
import os
import sys


def read_cache(cache, spec_path):
    from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download

    spec = json.load(open(spec_path))
    for repo in spec:
        kw = dict(repo_type=repo["repo_type"], cache_dir=cache)
        snap = snapshot_download(repo["repo_id"], **kw)
        if os.path.realpath(snap) != os.path.realpath(repo["snapshot"]):
            sys.exit(f"snapshot_download({repo['repo_id']}) = {snap}, we wrote {repo['snapshot']}")
        for f in repo["files"]:
            p = hf_hub_download(repo["repo_id"], f, **kw)
            want = os.path.join(repo["snapshot"], f)
            if os.path.abspath(p) != os.path.abspath(want):
                sys.exit(f"hf_hub_download({repo['repo_id']}, {f}) = {p}, we wrote {want}")
            if open(p, "rb").read() != open(want, "rb").read():
                sys.exit(f"{p}: content differs")
    info = scan_cache_dir(cache)
    if info.warnings:
        sys.exit(f"scan_cache_dir warnings: {[str(w) for w in info.warnings]}")
    seen = {(r.repo_id, r.repo_type): sorted(str(f.file_path.relative_to(rev.snapshot_path))
                                             for rev in r.revisions for f in rev.files)
            for r in info.repos}
    for repo in spec:
        got = seen.get((repo["repo_id"], repo["repo_type"]))
        if got != sorted(repo["files"]):
            sys.exit(f"scan_cache_dir sees {got} for {repo['repo_id']}, we wrote {sorted(repo['files'])}")
    print(json.dumps({"ok": True, "repos": len(spec)}))


def write_cache(cache, repo_id, repo_type, folder):
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        _create_symlink,
        repo_folder_name,
    )

    storage = os.path.join(cache, repo_folder_name(repo_id=repo_id, repo_type=repo_type))
    files = []
    for root, _, names in os.walk(folder):
        for n in names:
            full = os.path.join(root, n)
            files.append((os.path.relpath(full, folder).replace(os.sep, "/"), open(full, "rb").read()))
    files.sort()
    commit = hashlib.sha1(json.dumps([f for f, _ in files]).encode()).hexdigest()
    for rel, data in files:
        # The Hub's etags: sha256 for LFS files, the git blob sha1 otherwise.
        if rel.endswith((".parquet", ".safetensors", ".bin")):
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = os.path.join(storage, "blobs", etag)
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as fh:
            fh.write(data)
        pointer = os.path.join(storage, "snapshots", commit, rel)
        os.makedirs(os.path.dirname(pointer), exist_ok=True)
        _create_symlink(blob, pointer, new_blob=False)
    _cache_commit_hash_for_specific_revision(storage, "main", commit)
    print(json.dumps({"commit": commit}))


def load_parquet(files):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=list(files), split="train")
    print(json.dumps([dict(r) for r in ds], ensure_ascii=False))


def load_csv(files):
    import datasets

    kw = {"sep": "\t"} if all(f.endswith(".tsv") for f in files) else {}
    ds = datasets.load_dataset("csv", data_files=list(files), split="train", **kw)
    print(json.dumps([dict(r) for r in ds], ensure_ascii=False))


def make_parquet(out, rows_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = json.load(open(rows_path))
    pq.write_table(pa.Table.from_pylist(rows), out)


def data_files(spec_path):
    import datasets

    out = []
    for folder, config in json.load(open(spec_path)):
        builder = datasets.load_dataset_builder(folder, name=config)
        splits = {}
        for split, files in builder.config.data_files.items():
            splits[str(split)] = [os.path.relpath(f, folder).replace(os.sep, "/") for f in files]
        out.append({"config": builder.config.name, "splits": splits})
    print(json.dumps(out))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "read-cache": read_cache,
        "write-cache": write_cache,
        "load-parquet": lambda *a: load_parquet(a),
        "load-csv": lambda *a: load_csv(a),
        "make-parquet": make_parquet,
        "data-files": data_files,
    }[cmd](*args)
