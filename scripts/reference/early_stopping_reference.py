"""transformers' EarlyStoppingCallback, driven as Trainer drives it, on given per-evaluation metric values.

  early_stopping_reference.py IN.json   (prints a JSON list of results, one per case)

IN: a list of cases {"metric": "eval_loss", "greater_is_better": false, "patience": 2, "threshold": 0.0, "values": [..]}
(a value may be null: the metric is missing from that evaluation). For each evaluation, in Trainer's order:
`callback_handler.on_evaluate` (inside `evaluate()`), then `Trainer._determine_best_metric`. Prints
{"counters": [counter after each evaluation], "stop_at": index of the evaluation that stopped training or null,
"best": [state.best_metric after each evaluation]} per case.
"""

import json
import sys
import tempfile
import types

from transformers import EarlyStoppingCallback, Trainer, TrainerControl, TrainerState, TrainingArguments


def run(spec):
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            eval_strategy="steps",
            save_strategy="steps",
            metric_for_best_model=spec["metric"],
            greater_is_better=spec["greater_is_better"],
            load_best_model_at_end=True,
            report_to=[],
            use_cpu=True,
        )
    cb = EarlyStoppingCallback(early_stopping_patience=spec["patience"], early_stopping_threshold=spec["threshold"])
    state = TrainerState()
    control = TrainerControl()
    cb.on_train_begin(args, state, control)
    fake_trainer = types.SimpleNamespace(args=args, state=state)
    key = spec["metric"] if spec["metric"].startswith("eval_") else "eval_" + spec["metric"]
    counters, best, stop_at = [], [], None
    for i, v in enumerate(spec["values"]):
        state.global_step = i + 1
        metrics = {} if v is None else {key: v}
        cb.on_evaluate(args, state, control, metrics=metrics)
        if v is not None:
            Trainer._determine_best_metric(fake_trainer, metrics=metrics, trial=None)
        counters.append(cb.early_stopping_patience_counter)
        best.append(state.best_metric)
        if control.should_training_stop:
            stop_at = i
            break
    return {"counters": counters, "stop_at": stop_at, "best": best}


print(json.dumps([run(spec) for spec in json.load(open(sys.argv[1]))]))
